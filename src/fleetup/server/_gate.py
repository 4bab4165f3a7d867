"""The control-group health gate: pure statistics, no database, no clock.

A fixed failure-rate threshold cannot tell a release that doubles a fleet's background
failure rate (3 % to 6 %) from the background itself. This gate compares, over the same
window, the devices that took the rollout's release (*treated*) with the devices of the
same app and channel still on another version (*control*), from the periodic
``health-report`` events agents send (``[health] interval``). Each device counts once per
group, by its latest report in the window: a device that reports more often does not
weigh more, and a device whose window is shorter (it installed later) is not penalised.

The test: one-sided two-proportion z-test of ``H0: p_treated - p_control <= delta``
against ``H1: p_treated - p_control > delta`` (``delta`` = ``--max-failure-increase``),
with the unpooled (Wald) variance — pooling is only right for ``delta = 0`` — on
Agresti–Caffo adjusted proportions (one failure and one success added to each group), so
that a group with no failures yet does not have zero variance and halt on one report.
The rollout halts when the p-value is below ``1 - confidence``.

Why this test and not a sequential one: it is the textbook test operators can check by
hand from the numbers the rollout page shows, and its inputs are two counts per group.
Its weakness is repeated looks: the evaluator tests after every failure report and every
tick, so the chance of a false halt over a rollout's life is larger than
``1 - confidence`` (each look is another chance to cross by luck). That error costs a
paused rollout an operator resumes, not a bad release let through: repeated looks make
the gate stricter, never laxer. ``min_each`` (the rollout's ``min_reports``) keeps the
first, noisiest looks from deciding. A sequential test (mSPRT, alpha spending) would bound
the false-halt rate over all looks; it is the next step if false halts show up in the
simulator's figures.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GateResult", "GateVerdict", "GroupCounts", "control_gate", "group_counts",
           "one_sided_p"]


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """Devices of one group with a report in the window, and how many of them failed."""

    devices: int
    failures: int

    @property
    def rate(self) -> float:
        return self.failures / self.devices if self.devices else 0.0


class GateVerdict(enum.StrEnum):
    CLEAR = "pass"       # no evidence of an increase over the maximum (yet)
    HALT = "halt"        # the increase is over the maximum at the confidence asked
    WAIT = "wait"        # a group has fewer devices than ``min_each``


@dataclass(frozen=True, slots=True)
class GateResult:
    verdict: GateVerdict
    treated: GroupCounts
    control: GroupCounts
    difference: float  # observed p_treated - p_control
    z: float
    p_value: float
    reason: str


def group_counts(reports: Iterable[tuple[str, str | None, bool]], version: str
                 ) -> tuple[GroupCounts, GroupCounts]:
    """(treated, control) from ``(device id, version it ran, ok)`` reports in time order.

    Each device's latest report per group decides its health in that group.
    """
    latest: dict[tuple[str, bool], bool] = {}
    for device_id, ran, ok in reports:
        latest[(device_id, ran == version)] = ok
    counts = {True: [0, 0], False: [0, 0]}
    for (_, treated), ok in latest.items():
        counts[treated][0] += 1
        counts[treated][1] += not ok
    return GroupCounts(*counts[True]), GroupCounts(*counts[False])


def one_sided_p(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _z(treated: GroupCounts, control: GroupCounts, delta: float) -> float:
    """The Wald statistic on Agresti–Caffo adjusted proportions (see the module doc)."""
    nt, nc = treated.devices + 2, control.devices + 2
    pt, pc = (treated.failures + 1) / nt, (control.failures + 1) / nc
    return (pt - pc - delta) / math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)


def control_gate(treated: GroupCounts, control: GroupCounts, *, max_increase: float,
                 confidence: float, min_each: int) -> GateResult:
    """Halt, pass or wait: is the treated failure rate more than ``max_increase`` above
    the control's, at ``confidence``? (``min_each``: devices each group needs first.)"""
    difference = treated.rate - control.rate
    z = _z(treated, control, max_increase)
    p = one_sided_p(z)
    numbers = (f"treated {treated.failures}/{treated.devices} ({treated.rate:.1%}) vs "
               f"control {control.failures}/{control.devices} ({control.rate:.1%}): "
               f"+{difference:.1%}, z={z:.2f}, p={p:.3f}")
    if min(treated.devices, control.devices) < max(min_each, 1):
        return GateResult(GateVerdict.WAIT, treated, control, difference, z, p,
                          f"waiting for {max(min_each, 1)} devices per group; {numbers}")
    if p < 1 - confidence:
        return GateResult(GateVerdict.HALT, treated, control, difference, z, p,
                          f"failure increase over {max_increase:.1%} at "
                          f"{confidence:.0%} confidence: {numbers}")
    return GateResult(GateVerdict.CLEAR, treated, control, difference, z, p,
                      f"no increase over {max_increase:.1%} shown: {numbers}")
