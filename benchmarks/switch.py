"""Switch time: from a verified, staged release to ``current`` pointing at it.

fleetup switches by renaming one symlink over another (and fsyncing the directory), so
the time must not depend on the tree's size. Measured for a 1 MB and a 1 GB tree,
beside what backup-and-copy updaters do to put a new version in place: copying the
tree over the live one (``cp -a``), measured on the same trees in the same run.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks import Comparison, Context, Result, measure

TITLE = "Switch time (staged release → current)"

MB = 1 << 20
SWITCHES = 50


def _tree(dest: Path, size: int) -> Path:
    dest.mkdir(parents=True)
    block = random.Random(size).randbytes(MB)
    files = max(1, size // MB)
    for i in range(files):
        sub = dest / f"d{i // 100:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(block)
    return dest


def _switch_times(root: Path) -> list[float]:
    from fleetup.agent._store import DeviceStore

    store = DeviceStore(root)
    times = []
    for i in range(SWITCHES):
        version = "big" if i % 2 == 0 else "small"
        started = time.perf_counter()
        store.point_current(version)
        times.append(time.perf_counter() - started)
    return times


def run(ctx: Context) -> Result:
    result = Result(TITLE, ["tree", "method", "median", "max"])
    root = ctx.scratch / "device"
    (root / "releases").mkdir(parents=True)
    sizes = {"1 MB": MB, "1 GB": (256 if ctx.quick else 1024) * MB}
    label_big = "256 MB" if ctx.quick else "1 GB"
    ctx.log(f"building the staged trees (1 MB and {label_big})")
    _tree(root / "releases" / "small", sizes["1 MB"])
    _tree(root / "releases" / "big", sizes["1 GB"])
    times = _switch_times(root)
    big = [t for i, t in enumerate(times) if i % 2 == 0]
    small = [t for i, t in enumerate(times) if i % 2 == 1]
    for label, values in (("1 MB", small), (label_big, big)):
        result.rows.append([label, "fleetup (symlink rename + fsync)",
                            f"{statistics.median(values) * 1000:.3f} ms",
                            f"{max(values) * 1000:.3f} ms"])
    for label, name in (("1 MB", "small"), (label_big, "big")):
        live = ctx.scratch / f"live-{name}"
        live.mkdir()
        copy = measure(["cp", "-a", f"{root / 'releases' / name}/.", str(live)])
        subprocess.run(["sync"], check=True)
        result.rows.append([label, "cp -a over the live tree", f"{copy.seconds * 1000:.1f} ms",
                            ""])
        switch = statistics.median(big if name == "big" else small)
        result.comparisons.append(Comparison(f"{label} tree", "switch time", switch,
                                             "cp -a of the tree", copy.seconds, "s"))
    ratio = statistics.median(big) / statistics.median(small)
    result.notes.append(f"{SWITCHES} switches alternating between the trees; the {label_big} "
                        f"switch takes {ratio:.2f}× the 1 MB one (constant: the tree is not "
                        "touched)")
    result.notes.append(f"scratch on {ctx.scratch}; {os.cpu_count()} cores")
    return result
