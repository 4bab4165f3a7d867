"""Run the benchmark sections and print their tables, then one combined table.

    python -m benchmarks                 every section
    python -m benchmarks deltas          only the named sections
    python -m benchmarks --quick         the smallest cases of each
    python -m benchmarks --list          the sections there are

Figures go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from benchmarks import ROOT, Comparison, Context, Result, storage_of

_TMPFS = Path("/dev/shm")
_TMPFS_NEEDED = 4 << 30


def sections() -> dict[str, ModuleType]:
    """Every section module of the package, by name."""
    found = {}
    for info in pkgutil.iter_modules([str(ROOT)]):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"benchmarks.{info.name}")
            if hasattr(module, "run") and hasattr(module, "TITLE"):
                found[info.name] = module
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="the smallest cases only")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--tmpfs", action="store_true",
                        help="scratch files on /dev/shm (default: on disk, as on a device)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache",
                        help="where downloads are kept between runs")
    args = parser.parse_args(argv)
    available = sections()
    if args.list:
        for name, module in available.items():
            print(f"{name:12} {module.TITLE}")
        return 0
    unknown = set(args.names) - set(available)
    if unknown:
        parser.error(f"no such section: {', '.join(sorted(unknown))}")
    chosen = {n: m for n, m in available.items() if not args.names or n in args.names}
    args.cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="fleetup-bench-", dir=_scratch_parent(args.tmpfs)))
    started = time.monotonic()
    results: list[Result] = []
    try:
        for name, module in chosen.items():
            ctx = Context(cache=args.cache / name, scratch=scratch / name, quick=args.quick)
            ctx.cache.mkdir(parents=True, exist_ok=True)
            ctx.scratch.mkdir()
            ctx.log(f"== {name}: {module.TITLE} (scratch {ctx.scratch})")
            result = module.run(ctx)
            results.append(result)
            print_result(result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_comparisons([c for r in results for c in r.comparisons])
    print(f"\nsuite took {time.monotonic() - started:.0f} s on {os.cpu_count()} cores; "
          f"scratch files on {storage_of(scratch.parent)}")
    return 0


def _scratch_parent(tmpfs: bool) -> str | None:
    """On disk (the system's temporary directory, if it is not tmpfs itself, else
    /var/tmp), as on a device; /dev/shm with ``--tmpfs`` when it has room."""
    if not tmpfs:
        default = Path(tempfile.gettempdir())
        return str(default if storage_of(default) != "tmpfs" else Path("/var/tmp"))
    usable = _TMPFS.is_dir() and os.access(_TMPFS, os.W_OK)
    if usable and shutil.disk_usage(_TMPFS).free >= _TMPFS_NEEDED:
        return str(_TMPFS)
    return None


def number(value: float, unit: str = "") -> str:
    """``1,234 B``, ``0.42 s``, ``37 MB``: as many digits as a reader needs."""
    if unit == "s" and value < 0.001:
        return f"{value * 1_000_000:.0f} µs"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    if unit == "B" or value >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)

    def fmt(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    print(fmt(columns))
    print(line)
    for row in rows:
        print(fmt(row))


def print_result(result: Result) -> None:
    print(f"\n## {result.title}\n")
    print_table(result.columns, result.rows)
    for note in result.notes:
        print(f"  {note}")
    sys.stdout.flush()


def print_comparisons(comparisons: list[Comparison]) -> None:
    print("\n## fleetup beside its baselines (same run, same data)\n")
    rows = []
    for c in comparisons:
        ratio = c.fleetup / c.baseline_value if c.baseline_value else float("inf")
        rows.append([c.case, c.metric, number(c.fleetup, c.unit), c.baseline,
                     number(c.baseline_value, c.unit), f"{ratio:.2f}",
                     "yes" if c.fleetup_wins else "NO"])
    print_table(["case", "metric", "fleetup", "baseline", "baseline value", "ratio",
                 "fleetup as good or better"], rows)
    wins = sum(c.fleetup_wins for c in comparisons)
    print(f"\nfleetup as good as or better than its baseline on {wins} of {len(comparisons)}")


if __name__ == "__main__":
    sys.exit(main())
