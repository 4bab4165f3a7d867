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

__all__ = ["Comparison", "Context", "Measurement", "Result", "measure", "python_probe",
           "storage_of"]

ROOT = Path(__file__).resolve().parent


@dataclass
class Context:
    """What the runner hands every section."""

    cache: Path                       # kept between runs (git-ignored): downloads, trees
    scratch: Path                     # emptied after the run; on disk unless --tmpfs
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


def storage_of(path: Path) -> str:
    """``disk (ext4, /dev/vda)`` or ``tmpfs``: where a figure was measured, from the
    mount that holds ``path`` (the longest mount point that is a prefix of it)."""
    resolved = str(path.resolve())
    best = ("", "unknown", "unknown")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, point, fstype = line.split()[:3]
            if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) \
                    and len(point) >= len(best[0]):
                best = (point, fstype, device)
    _, fstype, device = best
    return "tmpfs" if fstype in ("tmpfs", "ramfs") else f"disk ({fstype}, {device})"
