"""Check-in load benchmark: requests/s and p50/p99 latency of device check-ins.

For 10k and 100k registered devices, on SQLite and on PostgreSQL, the real server
(``fleetup server --workers 2``) is driven by ``wrk`` (one thread, 64 connections,
on the same 2-core machine) with check-ins that cycle through every registered device.
Beside them, in the same run and against the same server, two baselines on the
server's constant-JSON route (``FLEETUP_SERVER_BENCHMARK_ROUTES=1``):

- A: wrk's static ``GET`` (the cheapest request for both client and server);
- B: the very same check-in requests (same Lua script, headers and body), sent to the
  constant route: the client's and HTTP parsing's share is then equal, and the
  difference is the check-in's own work.

An active rollout at its 10 % stage is seeded, so the decision logic runs as in
production, and devices' reports are buffered and written in batches as usual.

Each server process preloads the device tokens at start (``token_cache_preload``), as
in production; a 5 s warm-up precedes the measurements, which are interleaved rounds
(A, B, check-ins; 3 rounds of 5 s by default) reported as medians, because the machine
may be shared with other work.

Run: ``.venv/bin/python -m benchmarks.checkin [--sizes 10000,100000] [--rounds 3]``.
Needs ``wrk`` (``apt-get install wrk``) and, for PostgreSQL, its server binaries.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import insert
from sqlalchemy.orm import Session

from fleetup.server import make_engine, upgrade_database
from fleetup.server._auth import hash_token
from fleetup.server._models import Device, Release, Rollout

ROOT = Path(__file__).resolve().parents[2]
LUA = Path(__file__).with_name("checkin.lua")


@dataclass
class Result:
    label: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(db_url: str, devices: int, devices_file: Path) -> None:
    """Register ``devices`` devices (tokens known to the load generator), one pushed
    release and an active rollout at its 10 % stage."""
    engine = make_engine(db_url)
    upgrade_database(engine)
    now = datetime.now(UTC)
    with Session(engine) as session, devices_file.open("w") as out:
        batch = []
        for i in range(devices):
            device_id, token = f"dev{i:07d}", f"fud_bench{i:010d}"
            out.write(f"{device_id} {token} 1.0\n")
            batch.append({"id": device_id, "app": "bench", "platform": "linux-x86_64",
                          "channel": "stable", "tags": {"site": f"s{i % 7}"},
                          "version": "1.0", "state": "idle", "token_hash": hash_token(token),
                          "enrolled_at": now})
            if len(batch) == 5000:
                session.execute(insert(Device), batch)
                batch = []
        if batch:
            session.execute(insert(Device), batch)
        session.add(Release(app="bench", version="2.0", platform="linux-x86_64",
                            target_path="bench/linux-x86_64/bench-2.0.tar.zst", length=1,
                            sha256="0" * 64, channels=["stable"], update_type="major",
                            targets_version=2))
        session.add(Rollout(app="bench", version="2.0", channel="stable", group_filter={},
                            stages=[1, 10, 50, 100], stage_index=1, soak_seconds=86400,
                            min_reports=1000, max_failure_rate=0.05, state="active"))
        session.commit()
    engine.dispose()


def start_server(data: Path, db_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLEETUP_SERVER_BENCHMARK_ROUTES": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetup", "server", "--data", str(data), "--db", db_url,
         "--port", str(port), "--workers", "2"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the server did not start")


def wrk(url: str, seconds: float, script: Path | None, env: dict[str, str],
        label: str) -> Result:
    command = ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", "--latency",
               "--timeout", "10s"]
    if script:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True,
                            env={**os.environ, **env}).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return Result(label, rate, _percentile(output, "50%"), _percentile(output, "99%"),
                  int(errors.group(1)) if errors else 0)


def _median(results: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Result(results[0].label, mid([r.rate for r in results]),
                  mid([r.p50_ms for r in results]), mid([r.p99_ms for r in results]),
                  sum(r.errors for r in results))


def _percentile(output: str, which: str) -> float:
    match = re.search(rf"^\s+{re.escape(which)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_case(backend: str, db_url: str, devices: int, seconds: float, rounds: int,
             work: Path, in_process: bool) -> list[Result]:
    data = work / f"data-{backend}-{devices}"
    devices_file = work / f"devices-{devices}.txt"
    seed(db_url, devices, devices_file)
    port = free_port()
    server = start_server(data, db_url, port)
    url = f"http://127.0.0.1:{port}"
    env = {"DEVICES_FILE": str(devices_file)}
    name = f"{backend} {devices // 1000}k"
    try:
        wrk(url, 5, LUA, env, "warm-up")
        kinds = [("A", f"{url}/api/v1/bench/constant", None, env,
                  f"{name}: baseline A, GET constant JSON"),
                 ("B", url, LUA, {**env, "TARGET_PATH": "/api/v1/bench/constant"},
                  f"{name}: baseline B, check-in requests to constant JSON"),
                 ("C", url, LUA, env, f"{name}: check-ins")]
        # Interleaved rounds, medians: the machine is shared, so load from elsewhere
        # hits baseline and check-ins alike instead of one of them.
        runs: dict[str, list[Result]] = {k[0]: [] for k in kinds}
        for _ in range(rounds):
            for key, target, script, extra, label in kinds:
                runs[key].append(wrk(target, seconds, script, extra, label))
        results = [_median(runs[key]) for key, *_ in kinds]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    if in_process:
        from benchmarks.checkin._inprocess import measure

        cost = measure(db_url, data, devices_file)
        print(f"{name}: in process, per request: constant JSON {cost['constant']:.0f} us, "
              f"check-in {cost['checkin']:.0f} us", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--in-process", action="store_true",
                        help="also time both routes called in process through ASGI")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of (A, B, check-ins); medians are shown")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("benchmarks.checkin needs wrk: apt-get install wrk")
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fleetup-bench-"))
    results: list[Result] = []
    cluster = None
    try:
        for backend in args.backends.split(","):
            for devices in sizes:
                if backend == "sqlite":
                    db_url = f"sqlite:///{work}/sqlite-{devices}.db"
                else:
                    cluster = cluster or start_postgres()
                    if cluster is None:
                        sys.exit("PostgreSQL binaries not found: apt-get install postgresql")
                    db_url = cluster.new_database()
                results += run_case(backend, db_url, devices, args.seconds, args.rounds,
                                    work, args.in_process)
                _print(results[-3:])
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nsummary (medians of {args.rounds} interleaved rounds of {args.seconds:g} s; wrk "
          "-t1 -c64; server --workers 2; one 2-core machine)")
    _print(results)


def start_postgres():  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL cluster (the test suite's helper), or None without binaries."""
    from tests.support.postgres import PostgresCluster, _free_port, _system_user, find_postgres_bin

    bindir = find_postgres_bin()
    if bindir is None:
        return None
    user = _system_user()
    base = Path(tempfile.mkdtemp(prefix="fleetup-bench-pg-"))
    if user:
        shutil.chown(base, user, user)
    cluster = PostgresCluster(bindir, base, _free_port(), user)
    cluster.start()
    return cluster


def _print(results: list[Result]) -> None:
    baselines: list[float] = []
    for r in results:
        ratio = ""
        if "baseline" in r.label:
            baselines = [*baselines[-1:], r.rate]
        elif len(baselines) == 2:
            ratio = f"  {r.rate / baselines[0]:.2f}x A, {r.rate / baselines[1]:.2f}x B"
        print(f"{r.label:55s} {r.rate:7.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
              f"p99 {r.p99_ms:7.2f} ms  non-2xx {r.errors}{ratio}", flush=True)


if __name__ == "__main__":
    main()
