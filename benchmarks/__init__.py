"""fleetup's benchmark suite: ``python -m benchmarks`` (``make bench``) runs every section.

A *section* is a module of this package whose name does not start with ``_``. It has::

    TITLE = "Delta size on real releases"

    def run(ctx: Context) -> Result:
        ...

``run`` measures, and returns its detailed table plus :class:`Comparison` rows: each
fleetup figure beside the baseline it was measured against, in the same run on the same
data. The runner prints every section's table, then one combined table of all the
comparisons. Benchmarks print figures; they never assert on timings (the test suite has
no benchmark in it). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Comparison", "Context", "Measurement", "Result", "filesystem", "measure",
           "python_probe"]

ROOT = Path(__file__).resolve().parent


@dataclass
class Context:
    """What the runner hands every section."""

    cache: Path                       # kept between runs (git-ignored): downloads, trees
    scratch: Path                     # emptied after the run; tmpfs when there is one
    quick: bool = False               # --quick: the smallest cases only
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Comparison:
    """One fleetup figure beside the baseline it is measured against (lower is better
    unless ``higher_is_better``)."""

    case: str
    metric: str
    fleetup: float
    baseline: str
    baseline_value: float
    unit: str = ""
    higher_is_better: bool = False

    @property
    def fleetup_wins(self) -> bool:
        if self.higher_is_better:
            return self.fleetup >= self.baseline_value
        return self.fleetup <= self.baseline_value


@dataclass
class Result:
    """A section's output: its own table, its comparisons, and notes printed below."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Measurement:
    """One measured subprocess: seconds (its own figure when it reports one), peak RSS."""

    seconds: float
    peak_bytes: int
    stdout: str


def measure(cmd: Sequence[str], *, cwd: Path | None = None) -> Measurement:
    """Run ``cmd`` to completion; its wall time and peak resident memory.

    The command runs under ``_launch.py``, so its peak is its own and not this big
    process's. A child that prints ``seconds=<float>`` as its last stdout line reports
    its own time (a Python probe leaves out interpreter start-up and imports this way).

    Raises:
        RuntimeError: the command failed; the message has its stderr.
    """
    with tempfile.TemporaryDirectory() as tmp:
        stats, out, err = Path(tmp, "stats"), Path(tmp, "out"), Path(tmp, "err")
        with out.open("wb") as stdout, err.open("wb") as stderr:
            code = subprocess.call([sys.executable, "-S", str(ROOT / "_launch.py"),
                                    str(stats), *cmd], stdout=stdout, stderr=stderr, cwd=cwd)
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({code}): {err.read_text().strip()}")
        seconds, maxrss_kib = stats.read_text().split()
        text = out.read_text()
    lines = text.strip().splitlines()
    wall = float(lines[-1].partition("=")[2]) if lines and lines[-1].startswith(
        "seconds=") else float(seconds)
    return Measurement(wall, int(maxrss_kib) * 1024, text)


def python_probe(*args: str) -> list[str]:
    """The command that runs ``benchmarks/_probe.py`` with ``args`` in a fresh interpreter."""
    return [sys.executable, "-m", "benchmarks._probe", *args]


def filesystem(path: Path) -> str:
    """The file system ``path`` is on, as a note says it: ``"disk (ext4 on /dev/vda at /)"``
    or ``"tmpfs at /dev/shm"`` (from ``/proc/mounts``: the longest mount point above it)."""
    path = path.resolve()
    best = ("", "", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, point, fstype = [*line.split(), "", "", ""][:3]
        point = point.replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best[1]):
            best = (device, point, fstype)
    device, point, fstype = best
    if fstype in ("tmpfs", "ramfs"):
        return f"{fstype} at {point} (memory, not disk)"
    return f"disk ({fstype} on {device} at {point})"
