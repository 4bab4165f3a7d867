"""Run one fleet-simulator scenario and print its table; the picture goes to out/.

    python -m benchmarks.fleet_sim --devices 10000 --scenario bad [--interval 30]
        [--db postgresql+psycopg://USER@HOST/DB] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

from benchmarks.fleet_sim._run import Outcome, figures, run_scenario
from benchmarks.fleet_sim._svg import render
from benchmarks.fleet_sim.scenarios import SCENARIOS, Scenario

OUT = Path(__file__).with_name("out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def simulate(scenario: Scenario, devices: int, interval: int, work: Path, *,
             db_url: str | None = None, workers: int = 1) -> tuple[Outcome, Path]:
    """Run ``scenario``; its outcome and the SVG written for it."""
    work.mkdir(parents=True, exist_ok=True)
    outcome = run_scenario(scenario, devices, interval, work, db_url=db_url,
                           workers=workers, port=_free_port())
    OUT.mkdir(exist_ok=True)
    svg = OUT / f"rollout-{scenario.name}-{devices}.svg"
    svg.write_text(render(outcome))
    return outcome, svg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_sim",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="bad")
    parser.add_argument("--interval", type=int, default=10,
                        help="check-in interval in seconds (the server's)")
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        outcome, svg = simulate(scenario, args.devices, args.interval, Path(tmp),
                                db_url=args.db, workers=args.workers)
    print(f"scenario {scenario.name}: {scenario.what}")
    print(f"{args.devices} devices, interval {args.interval} s, {outcome.db}, "
          f"{args.workers} worker(s); {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in outcome.load)}; run {outcome.run_seconds:.0f} s")
    width = max(len(f) for f, _, _ in figures(outcome))
    for figure, value, goal in figures(outcome):
        print(f"  {figure:<{width}}  {value}" + (f"   [goal: {goal}]" if goal else ""))
    for d in outcome.decisions:
        print(f"  t={d.t / args.interval:5.2f} intervals  {d.what}")
    print(f"picture: {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
