"""The agent at rest: memory and CPU of ``fleetup agent run`` while it only polls.

A device spends almost all its life here. The agent runs in static mode against a
repository on loopback, polling every 10 s (so it really checks, six times a minute),
after it has installed a 4 MB release itself; its resident set (RSS, and PSS which
shares libraries fairly) and CPU time are sampled from /proc for a minute, from 30 s
after the install. The baseline
is the Python interpreter doing nothing, measured the same way: the floor any Python
agent starts from. Goal: under 40 MB RSS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks import Comparison, Context, Result, storage_of
from benchmarks.update import APP, PLATFORM, _http_server, _make_tree

TITLE = "Agent at rest"

MB = 1 << 20


def _sample(pid: int) -> tuple[int, int, float]:
    """(RSS bytes, PSS bytes, CPU seconds) of a process."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return rss, pss, cpu


def _watch(cmd: list[str], seconds: float, warmup: float, env: dict[str, str],
           ready: Callable[[], bool] = lambda: True) -> tuple[int, int, float]:
    """Max RSS, max PSS and CPU share of ``cmd`` over ``seconds``, from ``warmup``
    seconds after ``ready()`` holds."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    try:
        deadline = time.monotonic() + 300
        while not ready() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        time.sleep(warmup)
        _, _, cpu_start = _sample(process.pid)
        started = time.monotonic()
        peak_rss = peak_pss = 0
        while time.monotonic() - started < seconds:
            rss, pss, _ = _sample(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(1.0)
        _, _, cpu_end = _sample(process.pid)
        share = (cpu_end - cpu_start) / (time.monotonic() - started)
        return peak_rss, peak_pss, share
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(ctx: Context) -> Result:
    seconds = 15.0 if ctx.quick else 60.0
    repo = ctx.scratch / "repo"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    fleetup = [sys.executable, "-m", "fleetup"]
    subprocess.run([*fleetup, "repo", "init", str(repo)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = _make_tree(ctx.cache / "tree-rest-4mb", 4 * MB, seed=9)
    subprocess.run([*fleetup, "release", "add", str(tree), "--repo", str(repo), "--app", APP,
                    "--version", "1.0.0", "--platform", PLATFORM], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = Result(TITLE, ["process", f"peak RSS over {seconds:.0f} s", "peak PSS", "CPU"])
    with _http_server(repo / "public") as url:
        root = ctx.scratch / "device"
        config = ctx.scratch / "agent.toml"
        config.write_text(f"""app = "{APP}"
root = "{root}"
repo_url = "{url}"
trusted_root = "{repo / 'public' / 'metadata' / '1.root.json'}"
platform = "{PLATFORM}"
poll_interval = 10
poll_jitter = 0.0
[health]
startup_grace = 0.0
""")
        # The daemon installs the 4 MB release itself, then rests: what an update
        # leaves behind is part of the figure.
        ctx.log(f"fleetup agent run installs 1.0.0, then is watched for {seconds:.0f} s")
        rss, pss, cpu = _watch([*fleetup, "agent", "-c", str(config), "run"], seconds,
                               5.0 if ctx.quick else 30.0, env,
                               ready=lambda: (root / "current").exists())
    ctx.log(f"watching an idle interpreter for {seconds:.0f} s")
    floor_rss, floor_pss, floor_cpu = _watch(
        [sys.executable, "-c", "import time; time.sleep(3600)"], seconds, 1.0, env)
    result.rows.append(["fleetup agent run (after installing 4 MB; polls every 10 s)",
                        f"{rss / MB:.1f} MB",
                        f"{pss / MB:.1f} MB", f"{cpu * 100:.2f} %"])
    result.rows.append(["python -c 'sleep' (the interpreter floor)",
                        f"{floor_rss / MB:.1f} MB",
                        f"{floor_pss / MB:.1f} MB", f"{floor_cpu * 100:.2f} %"])
    result.comparisons.append(Comparison("idle agent", "peak RSS", rss / MB, "goal", 40.0,
                                         "MB"))
    result.notes.append(f"measured on {storage_of(ctx.scratch)}; the agent installed its "
                        "4 MB release itself before it was watched")
    result.notes.append("RSS counts shared library pages (libpython, OpenSSL, cryptography's "
                        "Rust extension) in full; PSS divides them among the processes that "
                        "map them.")
    return result
