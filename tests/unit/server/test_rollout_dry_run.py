"""The dry run of a rollout: per-stage reach with the cohorts the check-ins will use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetup._cohort import cohort_of
from fleetup.server._rollouts import (
    DeviceView,
    Offer,
    RolloutPlan,
    RolloutState,
    decide,
    stage_reach,
)

PLATFORMS = frozenset({"linux"})


def plan(**changes: object) -> RolloutPlan:
    values: dict[str, object] = {
        "id": 12, "app": "hello", "version": "1.1", "channel": "stable",
        "stages": (10.0, 50.0, 100.0), "stage_index": 0,
        "stage_started_at": datetime(2026, 1, 1, tzinfo=UTC), "soak": timedelta(hours=1),
        "min_reports": 5, "max_failure_rate": 0.1, "state": RolloutState.ACTIVE,
        "group": {"region": "eu"}}
    values.update(changes)
    return RolloutPlan(**values)  # type: ignore[arg-type]


def test_stage_reach_counts_what_each_stage_will_offer() -> None:
    devices = [DeviceView(f"d{i}", "hello", "linux", "stable", "1.0", {"region": "eu"})
               for i in range(300)]
    devices[0] = DeviceView("d0", "hello", "linux", "stable", "1.1", {"region": "eu"})
    devices[1] = DeviceView("d1", "hello", "arm", "stable", "1.0", {"region": "eu"})
    outside = [DeviceView("x1", "hello", "linux", "beta", "1.0", {"region": "eu"}),
               DeviceView("x2", "hello", "linux", "stable", "1.0", {"region": "us"}),
               DeviceView("x3", "other", "linux", "stable", "1.0", {"region": "eu"})]
    offer = Offer(plan(), PLATFORMS, failed_devices=frozenset({"d2"}))
    matching, in_scope, stages = stage_reach(offer, [*devices, *outside])
    assert (matching, in_scope) == (300, 299)  # d1: no release for its platform

    in_scope_cohorts = {d.id: cohort_of(d.id, "12") for d in devices if d.id != "d1"}
    for stage, percent in zip(stages, (10, 50, 100), strict=True):
        reached = [d for d, c in in_scope_cohorts.items() if c < percent]
        assert stage.reached == len(reached)
        # Not offered: d0 already runs 1.1, d2 failed it.
        assert stage.will_install == len([d for d in reached if d not in ("d0", "d2")])
    assert [s.new for s in stages] == [stages[0].reached, stages[1].reached - stages[0].reached,
                                       stages[2].reached - stages[1].reached]
    assert stages[-1].reached == 299


def test_stage_reach_agrees_with_the_check_in_decisions() -> None:
    devices = [DeviceView(f"dev-{i}", "hello", "linux", "stable", "1.0", {"region": "eu"})
               for i in range(200)]
    _, _, stages = stage_reach(Offer(plan(), PLATFORMS), devices)
    for index, stage in enumerate(stages):
        live = Offer(plan(stage_index=index), PLATFORMS)
        installing = [d for d in devices if decide(d, [live]).action == "install"]
        assert stage.will_install == len(installing)
