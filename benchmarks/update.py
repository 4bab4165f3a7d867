"""End-to-end update in static mode over loopback, beside the shell pipeline floor.

Three 100 MB trees: all incompressible binaries, all text in many files, and half of
each (the mixed tree). Each is published
with ``fleetup release add`` and served by one HTTP server on 127.0.0.1. Measured:

- ``fleetup agent update`` from an installed 1.0.0 to the 100 MB release (deltas off):
  TUF refresh, download, hash verification, unpacking into ``.partial``, tree digest
  check, flush, rename, switch, commit — against the floor, the pipeline
  ``curl URL | tee >(openssl dgst -sha256) | zstd -d | tar -x`` of the same archive
  from the same server, which checks nothing against signed data and is not
  crash-safe;
- the delta path: 100 MB release → a small change of it, fetched as a delta, against
  the same pipeline fetching the full new archive;
- peak memory of the agent for a 25 MB and a 100 MB archive (it must not grow with
  the archive: everything streams).

Each timing is the median of three runs on fresh copies of the device.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from benchmarks import Comparison, Context, Measurement, Result, measure, storage_of

TITLE = "End-to-end update (static mode, loopback)"

APP = "bench"
PLATFORM = "linux-x86_64"
MB = 1 << 20
RUNS = 3


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    return ["".join(rng.choice(letters[: 6 + i % 20]) for _ in range(3 + i % 7))
            for i in range(4000)]


def _make_tree(dest: Path, total: int, seed: int) -> Path:
    """Half random binaries (a few big files), half text (many small files)."""
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    rng = random.Random(seed)
    words = _words(rng)
    (dest / "bin").mkdir(parents=True)
    (dest / "share" / "doc").mkdir(parents=True)
    binary_files = max(1, total // (2 * 1_250_000))
    for i in range(binary_files):
        (dest / "bin" / f"blob{i:03d}.so").write_bytes(rng.randbytes(total // 2 // binary_files))
    text_files = max(1, total // (2 * 25_000))
    line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
    for i in range(text_files):
        body = "".join(line if n % 7 else " ".join(rng.choice(words) for _ in range(12)) + "\n"
                       for n in range(25_000 // len(line)))
        (dest / "share" / "doc" / f"page{i:05d}.txt").write_text(body)
    app = dest / "bin" / "app"
    app.write_text("#!/bin/sh\nexit 0\n")
    app.chmod(0o755)
    (dest / ".complete").touch()
    return dest


def _make_uniform_tree(dest: Path, total: int, seed: int, compressible: bool) -> Path:
    """All incompressible (random binaries of 2.5 MB) or all compressible (text pages
    of 25 KB): the two ends a release tree lies between."""
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    rng = random.Random(seed)
    (dest / "data").mkdir(parents=True)
    if compressible:
        words = _words(rng)
        for i in range(total // 25_000):
            lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
            (dest / "data" / f"page{i:05d}.txt").write_text(
                ("\n".join(lines) + "\n")[:25_000])
    else:
        for i in range(max(1, total // 2_500_000)):
            (dest / "data" / f"blob{i:03d}.so").write_bytes(rng.randbytes(2_500_000))
    (dest / ".complete").touch()
    return dest


def _small_change(source: Path, dest: Path) -> Path:
    """The same tree with a handful of files changed: a typical patch release."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, symlinks=True)
    (dest / ".complete").unlink()
    docs = sorted((dest / "share" / "doc").iterdir())
    for page in docs[:5]:
        page.write_text(page.read_text().replace("e", "E", 50))
    blob = sorted((dest / "bin").glob("blob*"))[0]
    data = bytearray(blob.read_bytes())
    data[1000:1064] = bytes(64)
    blob.write_bytes(bytes(data))
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _http_server(directory: Path) -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait()


def _publish(repo: Path, tree: Path, version: str) -> None:
    subprocess.run([sys.executable, "-m", "fleetup", "release", "add", str(tree), "--repo",
                    str(repo), "--app", APP, "--version", version, "--platform", PLATFORM],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _archive_url(repo: Path, url: str, version: str) -> tuple[str, int]:
    (path,) = (repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-{version}.tar.zst")
    return url + str(path.relative_to(repo / "public")), path.stat().st_size


def _config(path: Path, root: Path, url: str, repo: Path, deltas: bool,
            bandwidth: int = 0) -> Path:
    path.write_text(f"""app = "{APP}"
root = "{root}"
repo_url = "{url}"
trusted_root = "{repo / 'public' / 'metadata' / '1.root.json'}"
platform = "{PLATFORM}"
[health]
startup_grace = 0.0
[download]
deltas = {str(deltas).lower()}
bandwidth = {bandwidth}
""")
    return path


def _agent(config: Path, version: str) -> Measurement:
    return measure([sys.executable, "-m", "fleetup", "agent", "-c", str(config), "update",
                    "--version", version, "--no-progress"])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _pipeline(url: str, dest: Path, rate: int = 0) -> Measurement:
    dest.mkdir(parents=True)
    limit = f"--limit-rate {rate} " if rate else ""
    script = (f"set -o pipefail; curl -sf {limit}'{url}' | tee >(openssl dgst -sha256 "
              f">/dev/null) | zstd -dc | tar -x -C '{dest}'")
    return measure(["bash", "-c", script])


def _agent_runs(ctx: Context, base_device: Path, base_config_args: tuple[Path, str, Path, bool],
                version: str, label: str, bandwidth: int = 0) -> list[Measurement]:
    runs = []
    for i in range(1 if ctx.quick else RUNS):
        device = ctx.scratch / f"{label}-{i}"
        shutil.copytree(base_device, device, symlinks=True)
        _, url, repo, deltas = base_config_args
        config = _config(ctx.scratch / f"{label}-{i}.toml", device, url, repo, deltas,
                         bandwidth)
        runs.append(_agent(config, version))
        shutil.rmtree(device)
    return runs


def _uniform_case(ctx: Context, result: Result, kind: str, total: int) -> None:
    """A fresh install of a tree of one kind: one-shot ``agent update`` against the
    pipeline, in a repository of its own (no delta from 1.0.0 to it)."""
    compressible = kind == "compressible"
    tree = _make_uniform_tree(ctx.cache / f"tree-{kind}-{total}", total, 5, compressible)
    small = _make_tree(ctx.cache / "tree-1.0.0", 256 * 1024, seed=1)
    repo = ctx.scratch / f"repo-{kind}"
    subprocess.run([sys.executable, "-m", "fleetup", "repo", "init", str(repo)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _publish(repo, small, "1.0.0")
    before = ctx.scratch / f"public-1.0.0-{kind}"
    shutil.copytree(repo / "public", before, symlinks=True)
    _publish(repo, tree, "1.1.0")
    with _http_server(repo / "public") as url:
        base = ctx.scratch / f"device-{kind}"
        cfg = _config(ctx.scratch / f"{kind}.toml", base, url, repo, deltas=False)
        subprocess.run([sys.executable, "-m", "fleetup", "agent", "-c", str(cfg), "update",
                        "--version", "1.0.0", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        archive_url, archive_size = _archive_url(repo, url, "1.1.0")
        label = f"{total // MB} MB {kind} tree"
        ctx.log(f"{label}: fleetup agent update and the pipeline")
        ours = _agent_runs(ctx, base, (cfg, url, repo, False), "1.1.0", f"full-{kind}")
        floor = [_pipeline(archive_url, ctx.scratch / f"floor-{kind}-{i}")
                 for i in range(1 if ctx.quick else RUNS)]
        shutil.rmtree(base)
    ctx.log(f"{label}: fleetup agent run, from the release becoming visible to committed")
    daemon = [_daemon_update(ctx, repo, before, f"{kind}-{i}") for i in range(1)]
    visible_s = _median([d[0] for d in daemon])
    update_s = _median([d[1] for d in daemon])
    ours_s = _median([m.seconds for m in ours])
    floor_s = _median([m.seconds for m in floor])
    result.rows.append([label, "fleetup agent update", f"{ours_s:.2f}",
                        f"{max(m.peak_bytes for m in ours) / MB:.0f}", str(archive_size)])
    result.rows.append([label, "curl | openssl | zstd -d | tar -x", f"{floor_s:.2f}",
                        f"{max(m.peak_bytes for m in floor) / MB:.0f}", str(archive_size)])
    result.comparisons.append(Comparison(label, "update time", ours_s,
                                         "curl|openssl|zstd|tar × 1.3", floor_s * 1.3, "s"))
    result.rows.append([label, "fleetup agent run: download started → committed",
                        f"{update_s:.2f}", "", str(archive_size)])
    result.rows.append([label, "fleetup agent run: release visible → committed (1 s polls)",
                        f"{visible_s:.2f}", "", str(archive_size)])
    result.comparisons.append(Comparison(f"{label}, daemon", "download started → committed",
                                         update_s, "curl|openssl|zstd|tar × 1.3",
                                         floor_s * 1.3, "s"))
    result.notes.append(f"{label}: fleetup takes {ours_s / floor_s:.2f}× the pipeline's time "
                        f"one-shot, {update_s / floor_s:.2f}× in the daemon (goal: within 1.3×)")


def _log_time(line: str) -> float:
    """The time of an ``agent.log`` line (local time, milliseconds)."""
    stamp = line[:23]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _daemon_update(ctx: Context, repo: Path, before: Path, kind: str) -> tuple[float, float]:
    """``fleetup agent run`` polling every second, with 1.0.0 installed from ``before``
    (the repository's public tree before 1.1.0 was published). The served directory
    is switched to the repository holding 1.1.0 and the daemon installs it. Returns
    (visible → committed, download started → committed) in seconds, from the daemon's
    log: the first includes up to one poll interval of waiting; neither has an
    interpreter start."""
    served = ctx.scratch / f"served-{kind}"
    served.symlink_to(before)
    device = ctx.scratch / f"daemon-{kind}"
    log = device / ".fleetup" / "log" / "agent.log"
    status = device / ".fleetup" / "status.json"
    with _http_server(served) as url:
        config = _config(ctx.scratch / f"daemon-{kind}.toml", device, url, repo, deltas=False)
        config.write_text(config.read_text().replace(
            "[health]", "poll_interval = 1\npoll_jitter = 0.0\n[health]", 1))
        subprocess.run([sys.executable, "-m", "fleetup", "agent", "-c", str(config), "update",
                        "--version", "1.0.0", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checked = status.stat().st_mtime_ns
        daemon = subprocess.Popen([sys.executable, "-m", "fleetup", "agent", "-c", str(config),
                                   "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: status.stat().st_mtime_ns != checked, 60)  # one quiet poll
            swap = served.with_name(f"{served.name}.new")
            swap.symlink_to(repo / "public")
            visible = time.time()
            os.replace(swap, served)
            _wait_for(lambda: "event committed 1.0.0 -> 1.1.0" in log.read_text(), 300)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    lines = log.read_text().splitlines()
    committed = next(_log_time(x) for x in lines if "event committed 1.0.0 -> 1.1.0" in x)
    started = next(_log_time(x) for x in lines if "event download-started" in x
                   and "1.1.0" in x)
    shutil.rmtree(device)
    return committed - visible, committed - started


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon did not get there in time")
        time.sleep(0.01)


def run(ctx: Context) -> Result:
    total = (20 if ctx.quick else 100) * MB
    quarter = total // 4
    small = _make_tree(ctx.cache / "tree-1.0.0", 256 * 1024, seed=1)
    medium = _make_tree(ctx.cache / f"tree-1.5.0-{quarter}", quarter, seed=2)
    big = _make_tree(ctx.cache / f"tree-2.0.0-{total}", total, seed=3)
    patched = _small_change(big, ctx.scratch / "tree-2.0.1")
    repo = ctx.scratch / "repo"
    subprocess.run([sys.executable, "-m", "fleetup", "repo", "init", str(repo)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx.log("publishing 1.0.0, 1.5.0, 2.0.0, 2.0.1 (with deltas)")
    for tree, version in ((small, "1.0.0"), (medium, "1.5.0"), (big, "2.0.0"),
                          (patched, "2.0.1")):
        _publish(repo, tree, version)
    result = Result(TITLE, ["case", "tool", "seconds (median)", "peak MB", "bytes fetched"])
    for kind in ("incompressible", "compressible"):
        _uniform_case(ctx, result, kind, total)
    with _http_server(repo / "public") as url:
        base = ctx.scratch / "device-1.0.0"
        cfg = _config(ctx.scratch / "base.toml", base, url, repo, deltas=False)
        subprocess.run([sys.executable, "-m", "fleetup", "agent", "-c", str(cfg), "update",
                        "--version", "1.0.0", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        label = f"{total // MB} MB tree"
        archive_url, archive_size = _archive_url(repo, url, "2.0.0")
        ctx.log(f"{label}: fleetup agent update, {1 if ctx.quick else RUNS} runs")
        ours = _agent_runs(ctx, base, (cfg, url, repo, False), "2.0.0", "full")
        ctx.log(f"{label}: the pipeline floor")
        floor = [_pipeline(archive_url, ctx.scratch / f"floor-{i}")
                 for i in range(1 if ctx.quick else RUNS)]
        ours_s = _median([m.seconds for m in ours])
        floor_s = _median([m.seconds for m in floor])
        peak = max(m.peak_bytes for m in ours)
        result.rows.append([label, "fleetup agent update", f"{ours_s:.2f}",
                            f"{peak / MB:.0f}", str(archive_size)])
        result.rows.append([label, "curl | openssl | zstd -d | tar -x", f"{floor_s:.2f}",
                            f"{max(m.peak_bytes for m in floor) / MB:.0f}", str(archive_size)])
        result.comparisons.append(Comparison(label, "update time", ours_s,
                                             "curl|openssl|zstd|tar", floor_s * 1.3, "s"))
        result.notes.append(f"{label}: fleetup takes {ours_s / floor_s:.2f}× the pipeline's "
                            f"time (goal: within 1.3×; the comparison's baseline is 1.3× the "
                            f"floor of {floor_s:.2f} s)")

        # A device's link is slower than loopback: unpacking while downloading hides
        # the unpacking. Both sides capped at the same rate.
        rate = 20 * MB
        slow = _agent_runs(ctx, base, (cfg, url, repo, False), "2.0.0", "slow", rate)
        slow_floor = [_pipeline(archive_url, ctx.scratch / f"slowfloor-{i}", rate)
                      for i in range(1 if ctx.quick else RUNS)]
        slow_s = _median([m.seconds for m in slow])
        slow_floor_s = _median([m.seconds for m in slow_floor])
        case = f"{label}, 20 MB/s link"
        result.rows.append([case, "fleetup agent update (bandwidth = 20 MB/s)",
                            f"{slow_s:.2f}", f"{max(m.peak_bytes for m in slow) / MB:.0f}",
                            str(archive_size)])
        result.rows.append([case, "pipeline with curl --limit-rate 20M", f"{slow_floor_s:.2f}",
                            "", str(archive_size)])
        result.comparisons.append(Comparison(case, "update time", slow_s,
                                             "curl|openssl|zstd|tar × 1.3", slow_floor_s * 1.3,
                                             "s"))
        result.notes.append(f"{case}: fleetup takes {slow_s / slow_floor_s:.2f}× the "
                            f"pipeline's time")

        # Peak memory must not grow with the archive: 25 % of the tree vs all of it.
        medium_runs = _agent_runs(ctx, base, (cfg, url, repo, False), "1.5.0", "quarter")
        medium_peak = max(m.peak_bytes for m in medium_runs)
        result.rows.append([f"{quarter // MB} MB tree", "fleetup agent update",
                            f"{_median([m.seconds for m in medium_runs]):.2f}",
                            f"{medium_peak / MB:.0f}", str(_archive_url(repo, url, "1.5.0")[1])])
        result.comparisons.append(Comparison(
            "peak memory, 4× the archive", f"peak MB at {total // MB} MB", peak / MB,
            f"peak at {quarter // MB} MB × 1.1", medium_peak / MB * 1.1, "MB"))

        # The delta path: 2.0.0 installed, 2.0.1 arrives as a delta.
        at_200 = ctx.scratch / "device-2.0.0"
        shutil.copytree(base, at_200, symlinks=True)
        cfg2 = _config(ctx.scratch / "at200.toml", at_200, url, repo, deltas=False)
        subprocess.run([sys.executable, "-m", "fleetup", "agent", "-c", str(cfg2), "update",
                        "--version", "2.0.0", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deltas = list((repo / "public/targets" / APP / PLATFORM / "deltas")
                      .glob("*2.0.0_to_2.0.1*"))
        delta_size = deltas[0].stat().st_size if deltas else 0
        delta_runs = _agent_runs(ctx, at_200, (cfg2, url, repo, True), "2.0.1", "delta")
        new_url, new_size = _archive_url(repo, url, "2.0.1")
        delta_floor = [_pipeline(new_url, ctx.scratch / f"dfloor-{i}")
                       for i in range(1 if ctx.quick else RUNS)]
        delta_s = _median([m.seconds for m in delta_runs])
        delta_floor_s = _median([m.seconds for m in delta_floor])
        case = "small change of the big tree"
        result.rows.append([case, "fleetup agent update (delta)", f"{delta_s:.2f}",
                            f"{max(m.peak_bytes for m in delta_runs) / MB:.0f}",
                            str(delta_size)])
        result.rows.append([case, "pipeline, full archive", f"{delta_floor_s:.2f}", "",
                            str(new_size)])
        result.comparisons.append(Comparison(case, "bytes over the wire", delta_size,
                                             "full archive", new_size, "B"))
        result.comparisons.append(Comparison(case, "update time", delta_s,
                                             "pipeline, full archive", delta_floor_s, "s"))
    result.notes.append("fleetup's time includes starting Python, the TUF metadata refresh, "
                        "verifying every byte and the tree digest, and flushing the tree to "
                        "disk before the switch; the pipeline does none of that.")
    result.notes.append(f"measured on {storage_of(ctx.scratch)} ({ctx.scratch}); "
                        f"{os.cpu_count()} cores")
    return result
