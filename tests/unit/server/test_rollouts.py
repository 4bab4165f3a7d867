"""The pure rollout decisions: stages, eligibility, what a device does, stage verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetup._cohort import cohort_of
from fleetup._groups import parse_group
from fleetup.errors import UsageError
from fleetup.server._gate import GroupCounts, control_gate
from fleetup.server._rollouts import (
    TRANSITIONS,
    Action,
    DeviceView,
    Offer,
    Outcome,
    RolloutEvent,
    RolloutPlan,
    RolloutState,
    StageStats,
    Verdict,
    VerdictKind,
    decide,
    eligibility,
    gated_verdict,
    outcomes,
    parse_stages,
    sources_of,
    stage_stats,
    stage_verdict,
    transition,
    verdict_event,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PLATFORMS = frozenset({"linux-x86_64"})


def plan(**changes: object) -> RolloutPlan:
    values: dict[str, object] = {
        "id": 7, "app": "hello", "version": "1.1", "channel": "stable",
        "stages": (10.0, 50.0, 100.0), "stage_index": 0, "stage_started_at": T0,
        "soak": timedelta(hours=1), "min_reports": 5, "max_failure_rate": 0.1,
        "state": RolloutState.ACTIVE}
    values.update(changes)
    return RolloutPlan(**values)  # type: ignore[arg-type]


def device(device_id: str = "d1", **changes: object) -> DeviceView:
    values: dict[str, object] = {"id": device_id, "app": "hello", "platform": "linux-x86_64",
                                 "channel": "stable", "version": "1.0"}
    values.update(changes)
    return DeviceView(**values)  # type: ignore[arg-type]


def ids_by_cohort(salt: str, low: float, high: float, count: int) -> list[str]:
    found = [f"dev{i}" for i in range(5000) if low <= cohort_of(f"dev{i}", salt) < high]
    return found[:count]


@pytest.mark.parametrize(("text", "expected"), [
    ("1,10,50,100", (1.0, 10.0, 50.0, 100.0)), ("100", (100.0,)), ("0.5, 100", (0.5, 100.0))])
def test_parse_stages_accepts_growing_percents_ending_at_100(
        text: str, expected: tuple[float, ...]) -> None:
    assert parse_stages(text) == expected


@pytest.mark.parametrize("text", ["", "10,5,100", "0,100", "10,50", "10,10,100", "x", "50,150"])
def test_parse_stages_refuses_bad_schedules(text: str) -> None:
    with pytest.raises(UsageError):
        parse_stages(text)


def test_parse_group() -> None:
    assert parse_group(["region=eu", "hw=v2"]) == {"region": "eu", "hw": "v2"}
    with pytest.raises(UsageError):
        parse_group(["region"])


def test_a_device_once_in_stays_in_as_stages_grow() -> None:
    members = []
    for index in range(3):
        p = plan(stage_index=index)
        members.append({d for d in (f"dev{i}" for i in range(500))
                        if eligibility(device(d), Offer(p, PLATFORMS)).targeted})
    assert members[0] <= members[1] <= members[2]
    assert len(members[2]) == 500
    assert 0 < len(members[0]) < len(members[1]) < 500


@pytest.mark.parametrize(("view", "reason"), [
    (device(channel="beta"), "on channel beta"),
    (device(tags={"region": "us"}), "tags do not match the group region=eu"),
    (device(platform="win-arm64", tags={"region": "eu"}), "no release 1.1 for platform"),
    (device(failed=frozenset({"1.1"}), tags={"region": "eu"}), "health failure"),
    (device(version="1.1", tags={"region": "eu"}), "already on 1.1"),
    (device(version="2.0", tags={"region": "eu"}), "already on 2.0"),
])
def test_eligibility_says_why_not(view: DeviceView, reason: str) -> None:
    seen = eligibility(view, Offer(plan(group={"region": "eu"}, stages=(100.0,)), PLATFORMS))
    assert not seen.targeted
    assert reason in seen.reason


def test_eligibility_by_cohort() -> None:
    p = plan()
    inside = ids_by_cohort(p.salt, 0, 10, 1)[0]
    outside = ids_by_cohort(p.salt, 10, 100, 1)[0]
    assert eligibility(device(inside), Offer(p, PLATFORMS)).targeted
    seen = eligibility(device(outside), Offer(p, PLATFORMS))
    assert not seen.targeted
    assert "not below the stage's 10%" in seen.reason


def test_a_device_that_failed_a_release_is_not_offered_it_again() -> None:
    p = plan(stages=(100.0,))
    decision = decide(device("d1"), [Offer(p, PLATFORMS, failed_devices=frozenset({"d1"}))])
    assert decision.action == Action.NONE
    assert "health failure" in decision.reason


def test_decide_installs_for_the_active_rollout_with_target_path() -> None:
    p = plan(stages=(100.0,))
    decision = decide(device(), [Offer(p, PLATFORMS)])
    assert decision.action == Action.INSTALL
    assert decision.version == "1.1"
    assert decision.target == "hello/linux-x86_64/hello-1.1.tar.zst"
    assert decision.rollout_id == 7


def test_paused_rollout_offers_nothing_new_but_completed_target_still_applies() -> None:
    completed = plan(id=3, version="1.0", state=RolloutState.COMPLETED)
    paused = plan(id=7, state=RolloutState.PAUSED, stages=(100.0,))
    fresh = decide(device(version=None), [Offer(completed, PLATFORMS), Offer(paused, PLATFORMS)])
    assert (fresh.action, fresh.version, fresh.rollout_id) == (Action.INSTALL, "1.0", 3)
    on_old = decide(device(version="1.0"), [Offer(completed, PLATFORMS),
                                            Offer(paused, PLATFORMS)])
    assert on_old.action == Action.NONE
    assert "paused" in on_old.reason


def test_a_device_outside_the_stage_gets_the_last_completed_release() -> None:
    completed = plan(id=3, version="1.0", state=RolloutState.COMPLETED)
    active = plan(id=7)
    outside = ids_by_cohort(active.salt, 10, 100, 1)[0]
    decision = decide(device(outside, version=None), [Offer(active, PLATFORMS),
                                                      Offer(completed, PLATFORMS)])
    assert (decision.action, decision.version) == (Action.INSTALL, "1.0")


def test_newest_completed_rollout_of_the_channel_wins_for_joiners() -> None:
    offers = [Offer(plan(id=1, version="1.0", state=RolloutState.COMPLETED), PLATFORMS),
              Offer(plan(id=2, version="1.1", state=RolloutState.COMPLETED), PLATFORMS)]
    assert decide(device(version=None), offers).version == "1.1"


def test_abort_with_rollback_sends_committed_devices_back() -> None:
    aborted = plan(state=RolloutState.ABORTED, rollback=True)
    offer = Offer(aborted, PLATFORMS, rollback_to={"d1": "1.0"})
    decision = decide(device("d1", version="1.1"), [offer])
    assert (decision.action, decision.version) == (Action.ROLLBACK, "1.0")
    assert decision.target == "hello/linux-x86_64/hello-1.0.tar.zst"
    # A device that never took the release is left alone.
    assert decide(device("d2", version="1.0"), [offer]).action == Action.NONE


def test_rollback_reaches_only_devices_the_rollout_offered_its_release_to() -> None:
    """issue 11 §1: a device in the cohort that took the release elsewhere is not the
    aborted rollout's to send back (the old code fell back to its previous version)."""
    aborted = plan(state=RolloutState.ABORTED, rollback=True, stages=(100.0,))
    decision = decide(device("d9", version="1.1", previous_version="0.9"),
                      [Offer(aborted, PLATFORMS, rollback_to={"d1": "1.0"})])
    assert decision.action == Action.NONE


def test_a_newer_rollout_of_the_version_supersedes_the_rollback_order() -> None:
    aborted = plan(id=7, state=RolloutState.ABORTED, rollback=True, stages=(100.0,))
    again = plan(id=8, stages=(100.0,))
    offers = [Offer(aborted, PLATFORMS, rollback_to={"d1": "1.0"}), Offer(again, PLATFORMS)]
    assert decide(device("d1", version="1.1"), offers).action == Action.NONE
    back = decide(device("d1", version="1.0"), offers)
    assert (back.action, back.version, back.rollout_id) == (Action.INSTALL, "1.1", 8)


def test_an_older_rollout_does_not_offer_what_a_newer_abort_took_back() -> None:
    done = plan(id=6, state=RolloutState.COMPLETED, stages=(100.0,))
    aborted = plan(id=7, state=RolloutState.ABORTED, rollback=True, stages=(100.0,))
    offers = [Offer(done, PLATFORMS), Offer(aborted, PLATFORMS, rollback_to={"d1": "1.0"})]
    decision = decide(device("d1", version="1.0"), offers)
    assert decision.action == Action.NONE
    assert "withdrawn" in decision.reason
    assert decide(device("d2", version="1.0"), offers).action == Action.INSTALL


def test_transition_table_allows_only_its_rows() -> None:
    assert transition(RolloutState.ACTIVE, RolloutEvent.HALT) is RolloutState.PAUSED
    assert transition(RolloutState.PAUSED, RolloutEvent.RESUME) is RolloutState.ACTIVE
    assert transition(RolloutState.COMPLETED, RolloutEvent.RESUME) is None
    assert transition(RolloutState.ABORTED, RolloutEvent.RESUME) is None
    assert set(sources_of(RolloutEvent.ABORT)) == {RolloutState.ACTIVE, RolloutState.PAUSED,
                                                   RolloutState.COMPLETED}


def test_a_completed_rollout_can_be_reverted() -> None:
    # The revert row: a bad release found after 100 % goes back (abort with rollback).
    assert transition(RolloutState.COMPLETED, RolloutEvent.ABORT) is RolloutState.ABORTED
    assert transition(RolloutState.COMPLETED, RolloutEvent.HALT) is None


def test_every_state_is_reachable_and_finished_states_are_final() -> None:
    reached, frontier = {RolloutState.ACTIVE}, [RolloutState.ACTIVE]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(RolloutState)
    assert not [row for row in TRANSITIONS if row[0] is RolloutState.ABORTED]
    assert [row for row in TRANSITIONS if row[0] is RolloutState.COMPLETED] == [
        (RolloutState.COMPLETED, RolloutEvent.ABORT)]


def test_a_gate_halt_pauses_an_active_rollout_only() -> None:
    halt = control_gate(GroupCounts(100, 30), GroupCounts(100, 3), max_increase=0.02,
                        confidence=0.95, min_each=5)
    advance = Verdict(VerdictKind.ADVANCE, "healthy")
    assert gated_verdict(plan(), advance, halt) == Verdict(VerdictKind.PAUSE, halt.reason)
    assert gated_verdict(plan(), advance, None) is advance
    assert gated_verdict(plan(state=RolloutState.PAUSED), advance, halt) is advance


def test_verdicts_are_lifecycle_events() -> None:
    assert verdict_event(Verdict(VerdictKind.PAUSE, "")) is RolloutEvent.HALT
    assert verdict_event(Verdict(VerdictKind.WAIT, "")) is None


def test_abort_without_rollback_leaves_devices_alone() -> None:
    aborted = plan(state=RolloutState.ABORTED, stages=(100.0,))
    decision = decide(device("d1", version="1.1"), [Offer(aborted, PLATFORMS,
                                                          rollback_to={"d1": "1.0"})])
    assert decision.action == Action.NONE


def test_other_apps_and_channels_are_ignored() -> None:
    offers = [Offer(plan(app="other", stages=(100.0,)), PLATFORMS),
              Offer(plan(id=8, channel="beta", stages=(100.0,)), PLATFORMS)]
    decision = decide(device(), offers)
    assert decision.action == Action.NONE
    assert "no rollout" in decision.reason


def test_outcomes_settle_once_per_device() -> None:
    """One classification (fleetup._protocol): a commit settles a device as succeeded, a
    rollback alone (an operator's order) is no report, repeats count once."""
    result = outcomes([("a", "committed"), ("b", "download-failed"), ("b", "committed"),
                       ("c", "download-started"), ("d", "rolled-back"),
                       *[("e", "health-failed")] * 100, ("e", "rolled-back")])
    assert result == {"a": Outcome.SUCCEEDED, "b": Outcome.SUCCEEDED, "e": Outcome.FAILED}


def test_stage_stats_splits_the_stage_band_from_the_whole_rollout() -> None:
    p = plan(stage_index=1)  # stage 10-50 %
    early = ids_by_cohort(p.salt, 0, 10, 3)
    band = ids_by_cohort(p.salt, 10, 50, 4)
    later = ids_by_cohort(p.salt, 50, 100, 5)
    results = {early[0]: Outcome.FAILED, band[0]: Outcome.SUCCEEDED, band[1]: Outcome.FAILED}
    offered_at = {early[0]: 0, band[0]: 1, band[1]: 1}
    stats = stage_stats(p, [cohort_of(d, p.salt) for d in early + band + later], results,
                        offered_at)
    assert stats == StageStats(stage_targeted=4, stage_reports=2, stage_failures=1,
                               total_reports=3, total_failures=2)


@pytest.mark.parametrize(("stats", "at", "kind", "why"), [
    (StageStats(10, 5, 0, 5, 0), T0 + timedelta(minutes=30), VerdictKind.WAIT, "soaking"),
    (StageStats(10, 4, 0, 4, 0), T0 + timedelta(hours=2), VerdictKind.WAIT, "4 of 5"),
    (StageStats(10, 5, 0, 5, 0), T0 + timedelta(hours=2), VerdictKind.ADVANCE, "50%"),
    (StageStats(2, 2, 0, 2, 0), T0 + timedelta(hours=2), VerdictKind.ADVANCE, "healthy"),
    (StageStats(0, 0, 0, 0, 0), T0 + timedelta(hours=2), VerdictKind.ADVANCE, "healthy"),
    (StageStats(10, 5, 1, 5, 1), T0 + timedelta(minutes=1), VerdictKind.PAUSE, "20.0%"),
    (StageStats(10, 3, 3, 3, 3), T0 + timedelta(hours=2), VerdictKind.WAIT, "3 of 5"),
    (StageStats(10, 10, 1, 10, 1), T0 + timedelta(hours=2), VerdictKind.ADVANCE, "healthy"),
])
def test_stage_verdict(stats: StageStats, at: datetime, kind: VerdictKind, why: str) -> None:
    verdict = stage_verdict(plan(), stats, at)
    assert verdict.kind == kind
    assert why in verdict.reason


def test_the_last_healthy_stage_completes() -> None:
    verdict = stage_verdict(plan(stage_index=2), StageStats(5, 5, 0, 9, 0),
                            T0 + timedelta(hours=2))
    assert verdict.kind == VerdictKind.COMPLETE


def test_failures_before_a_resume_do_not_pause_again() -> None:
    stats = StageStats(10, 6, 3, 6, 3)
    assert stage_verdict(plan(), stats, T0).kind == VerdictKind.PAUSE
    resumed = plan(base_reports=6, base_failures=3)
    assert stage_verdict(resumed, stats, T0).kind == VerdictKind.WAIT
    assert stage_verdict(resumed, stats, T0 + timedelta(hours=2)).kind == VerdictKind.ADVANCE


def test_only_active_rollouts_move() -> None:
    for state in (RolloutState.PAUSED, RolloutState.COMPLETED, RolloutState.ABORTED):
        verdict = stage_verdict(plan(state=state), StageStats(5, 5, 5, 5, 5),
                                T0 + timedelta(days=1))
        assert verdict.kind == VerdictKind.WAIT
