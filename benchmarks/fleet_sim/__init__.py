"""Fleet simulator: thousands of simulated devices against a real ``fleetup server``.

    python -m benchmarks.fleet_sim --devices 10000 --scenario bad
    python -m benchmarks fleet_sim   (a section: 1,000 devices, 5 s interval, each scenario)

See ``_sim`` (the devices), ``_run`` (one scenario end to end), ``scenarios`` (the data)
and ``_svg`` (the picture). Pictures go to benchmarks/fleet_sim/out/.
"""

from __future__ import annotations

from benchmarks import Context, Result

TITLE = "Fleet simulator: staged rollouts with simulated devices (real server)"


def run(ctx: Context) -> Result:
    from benchmarks.fleet_sim.__main__ import simulate
    from benchmarks.fleet_sim.scenarios import SCENARIOS

    result = Result(TITLE, ["scenario", "figure", "value", "goal"])
    devices, interval = (200, 3) if ctx.quick else (1000, 5)
    for name in ("healthy", "bad", "subtle", "kill"):
        ctx.log(f"fleet_sim: {name}, {devices} devices")
        outcome, svg = simulate(SCENARIOS[name], devices, interval, ctx.scratch / name)
        result.rows += [[name, *row] for row in _rows(outcome)]
        result.notes.append(f"{name}: picture {svg}")
    return result


def _rows(outcome: object) -> list[tuple[str, str, str]]:
    from benchmarks.fleet_sim._run import Outcome, figures

    assert isinstance(outcome, Outcome)
    return figures(outcome)
