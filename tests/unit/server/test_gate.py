"""The control-group gate's statistics against a brute-force computation."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetup.server._gate import (
    GateVerdict,
    GroupCounts,
    control_gate,
    group_counts,
)

outcomes = st.lists(st.booleans(), min_size=0, max_size=300)  # True: the device failed


def _brute_p(treated: list[bool], control: list[bool], delta: float) -> float:
    """The same test computed another way: Agresti–Caffo by appending one failure and
    one success to each list, the variance of each list computed from its elements, and
    the tail from :class:`statistics.NormalDist`."""
    t, c = [*treated, True, False], [*control, True, False]
    mean_t, mean_c = statistics.fmean(t), statistics.fmean(c)
    var_t, var_c = statistics.pvariance(t, mean_t), statistics.pvariance(c, mean_c)
    z = (mean_t - mean_c - delta) / math.sqrt(var_t / len(t) + var_c / len(c))
    return 1 - statistics.NormalDist().cdf(z)


@given(outcomes, outcomes, st.floats(0, 0.2), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_p_value_and_verdict_match_the_brute_force(treated: list[bool], control: list[bool],
                                                   delta: float, confidence: float) -> None:
    result = control_gate(GroupCounts(len(treated), sum(treated)),
                          GroupCounts(len(control), sum(control)), max_increase=delta,
                          confidence=confidence, min_each=1)
    expected = _brute_p(treated, control, delta)
    assert result.p_value == pytest.approx(expected, abs=1e-9)
    if min(len(treated), len(control)) < 1:
        assert result.verdict is GateVerdict.WAIT
    elif abs(expected - (1 - confidence)) > 1e-9:
        halts = expected < 1 - confidence
        assert result.verdict is (GateVerdict.HALT if halts else GateVerdict.CLEAR)


@given(st.integers(1, 200), st.integers(0, 200), st.integers(1, 200), st.integers(0, 200))
def test_more_treated_failures_never_turn_a_halt_into_a_pass(nt: int, ft: int, nc: int,
                                                             fc: int) -> None:
    ft, fc = min(ft, nt - 1), min(fc, nc)
    kwargs = {"max_increase": 0.02, "confidence": 0.95, "min_each": 1}
    before = control_gate(GroupCounts(nt, ft), GroupCounts(nc, fc), **kwargs)
    after = control_gate(GroupCounts(nt, ft + 1), GroupCounts(nc, fc), **kwargs)
    assert after.z >= before.z
    assert not (before.verdict is GateVerdict.HALT and after.verdict is not GateVerdict.HALT)


def _binomial(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]


@pytest.mark.parametrize(("nt", "nc", "control_rate", "delta"), [
    (50, 200, 0.03, 0.02), (200, 200, 0.03, 0.02), (30, 30, 0.2, 0.1), (20, 100, 0.0, 0.02)])
def test_a_release_exactly_at_the_maximum_halts_at_most_alpha_of_the_time(
        nt: int, nc: int, control_rate: float, delta: float) -> None:
    # Exact: every (treated failures, control failures) weighed by its binomial chance.
    ft, fc = _binomial(nt, control_rate + delta), _binomial(nc, control_rate)
    halted = sum(ft[x] * fc[y] for x in range(nt + 1) for y in range(nc + 1)
                 if control_gate(GroupCounts(nt, x), GroupCounts(nc, y), max_increase=delta,
                                 confidence=0.95, min_each=5).verdict is GateVerdict.HALT)
    assert halted <= 0.05


def test_the_subtle_release_is_caught_where_a_fixed_threshold_is_not() -> None:
    # 3 % background, a release that doubles it to 6 %: a fixed 7 % threshold (set above
    # the background to avoid halting every rollout) lets it through; the gate does not.
    result = control_gate(GroupCounts(1000, 60), GroupCounts(4000, 120), max_increase=0.0,
                          confidence=0.95, min_each=5)
    assert result.verdict is GateVerdict.HALT
    assert "60/1000" in result.reason
    assert "120/4000" in result.reason


def test_small_groups_wait() -> None:
    result = control_gate(GroupCounts(3, 3), GroupCounts(100, 0), max_increase=0.02,
                          confidence=0.95, min_each=5)
    assert result.verdict is GateVerdict.WAIT


def test_each_device_counts_once_per_group_by_its_latest_report() -> None:
    reports = [("a", "1.1", False), ("a", "1.1", True), ("b", "1.1", False),
               ("b", "1.1", False), ("c", "1.0", False), ("a", "1.0", True)]
    treated, control = group_counts(reports, "1.1")
    assert treated == GroupCounts(2, 1)
    assert control == GroupCounts(2, 1)
