"""The pure analytics: fixed rows in, figures computed by hand out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetup._cohort import cohort_of
from fleetup.server._analytics import (
    NO_REASON,
    ChannelTarget,
    DeviceRow,
    EventRow,
    channel_targets,
    hourly_rates,
    install_seconds,
    percentile,
    percentiles,
    rollout_seconds,
    rollout_stage_rows,
    stuck_devices,
    top_failure_reasons,
    update_rates,
    version_distribution,
)
from fleetup.server._rollouts import Outcome, RolloutPlan, RolloutState

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
_ids = iter(range(1_000_000))


def ev(device: str, kind: str, update: str | None = None, *, at: float = 0.0,
       received: float = 0.0, rollout: int | None = None, version: str | None = "1.1",
       reason: str = "") -> EventRow:
    """An event ``at`` seconds after T0 on the device, ``received`` seconds after T0."""
    return EventRow(device, f"e{next(_ids)}", kind, T0 + timedelta(seconds=at),
                    T0 + timedelta(seconds=received), "hello", version, "1.0", update, rollout,
                    reason)


# -- rates ------------------------------------------------------------------------------


def test_rates_count_each_update_once() -> None:
    events = [
        # d1: a full update that committed (several events, one update).
        ev("d1", "download-started", "u1"), ev("d1", "switched", "u1"),
        ev("d1", "committed", "u1"),
        # d2: a failed health check and the automatic rollback: one failure, one rollback
        # (a rollback event is about the version it left: its from_version).
        ev("d2", "health-failed", "u2"), ev("d2", "rolled-back", "u2"),
        # d3: two download failures in two attempts, then success in a third: one
        # update of 1.1, and it succeeded.
        ev("d3", "download-failed", "u3"), ev("d3", "download-failed", "u4"),
        ev("d3", "committed", "u5"),
        # d4: the same failure reported twice, without an update id: one update of 1.1.
        ev("d4", "verify-failed"), ev("d4", "verify-failed"),
        # d5: an operator-ordered rollback, as the agent reports it.
        ev("d5", "rollback", "u6"), ev("d5", "rolled-back", "u6"),
        # Not outcomes.
        ev("d6", "check"), ev("d6", "download-started", "u7"),
    ]
    rates = update_rates(events)
    # Succeeded: d1, d3. Failed: d2, d4. Rolled back: d2, d5.
    assert (rates.updates, rates.succeeded, rates.failed, rates.rolled_back) == (4, 2, 2, 2)
    assert rates.success_rate == pytest.approx(2 / 4)
    assert rates.failure_rate == pytest.approx(2 / 4)
    assert rates.rollback_rate == pytest.approx(2 / 4)


def test_one_device_repeating_failures_is_one_failed_update() -> None:
    """issue 12 §3: a device posting 100 failed updates must not move the fleet's rate."""
    events = [ev("good", "committed", "u0"), ev("bad", "health-failed", "u1")]
    events += [ev("bad", "health-failed", f"x{i}") for i in range(100)]
    assert update_rates(events).failure_rate == 0.5


def test_an_attempt_that_failed_then_committed_counts_as_a_success() -> None:
    rates = update_rates([ev("d1", "error", "u1"), ev("d1", "committed", "u1")])
    assert (rates.updates, rates.succeeded, rates.failed) == (1, 1, 0)


def test_no_updates_means_no_rates() -> None:
    rates = update_rates([ev("d1", "check")])
    assert rates.updates == 0
    assert (rates.success_rate, rates.failure_rate, rates.rollback_rate) == (None, None, None)


def test_hourly_rates_bucket_by_arrival_oldest_first() -> None:
    end = T0 + timedelta(hours=2, minutes=30)  # 12:30: buckets 10:00, 11:00, 12:00
    events = [ev("d1", "committed", "a", received=-1),             # 09:59:59: outside
              ev("d1", "committed", "b", received=0),              # 10:00
              ev("d2", "health-failed", "c", received=3599),       # 10:59:59
              ev("d2", "rolled-back", "c", received=3601),         # 11:00:01
              ev("d3", "committed", "d", received=2 * 3600 + 60)]  # 12:01
    hours = hourly_rates(events, end=end, hours=3)
    assert [h.start for h in hours] == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert [(h.rates.updates, h.rates.succeeded, h.rates.failed, h.rates.rolled_back)
            for h in hours] == [(2, 1, 1, 0), (0, 0, 0, 1), (1, 1, 0, 0)]
    assert hours[0].rates.success_rate == 0.5
    assert hours[1].rates.rollback_rate is None  # a rollback, but no update finished then


# -- time to update ---------------------------------------------------------------------


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([], 50, None),
    ([7.0], 99, 7.0),
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0], 50, 30.0),   # rank ceil(3.0) = 3
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0], 90, 60.0),   # rank ceil(5.4) = 6
    ([60.0, 10.0, 40.0, 20.0, 50.0, 30.0], 34, 30.0),   # unsorted; rank ceil(2.04) = 3
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 95, 10.0),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 10, 1.0),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 11, 2.0),
])
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float | None
                                    ) -> None:
    assert percentile(values, p) == expected


def test_percentiles_summary() -> None:
    summary = percentiles([float(s) for s in range(1, 101)])
    assert (summary.count, summary.p50, summary.p90, summary.p95, summary.p99, summary.max) == (
        100, 50.0, 90.0, 95.0, 99.0, 100.0)


def test_install_seconds_pair_start_and_commit_per_attempt() -> None:
    events = [
        ev("d1", "download-started", "u1", at=0), ev("d1", "committed", "u1", at=42),
        # A retried report of the start does not move it; the first commit counts.
        ev("d2", "download-started", "u2", at=100), ev("d2", "download-started", "u2", at=130),
        ev("d2", "committed", "u2", at=190), ev("d2", "committed", "u2", at=400),
        # No update id: matched by version.
        ev("d3", "download-started", None, at=5, version="1.1"),
        ev("d3", "committed", None, at=15, version="1.1"),
        # Unfinished, or never started, or ending before it began (device clock jumped).
        ev("d4", "download-started", "u4", at=0),
        ev("d5", "committed", "u5", at=10),
        ev("d6", "download-started", "u6", at=50), ev("d6", "committed", "u6", at=20),
    ]
    assert sorted(install_seconds(events)) == [10.0, 42.0, 90.0]


def test_rollout_seconds_from_the_rollout_start_to_each_devices_first_commit() -> None:
    started = {7: T0}
    events = [ev("d1", "committed", "u1", received=30, rollout=7),
              ev("d1", "committed", "u1", received=90, rollout=7),  # a retried report
              ev("d2", "committed", "u2", received=600, rollout=7),
              ev("d3", "committed", "u3", received=10, rollout=8),  # another rollout
              ev("d4", "committed", "u4", received=10, rollout=None),
              ev("d5", "health-failed", "u5", received=10, rollout=7)]
    assert sorted(rollout_seconds(events, started)) == [30.0, 600.0]


# -- versions and stuck devices ---------------------------------------------------------


def test_version_distribution_newest_first_per_app_with_shares() -> None:
    rows = [("hello", "1.9", 2), ("hello", "1.10", 5), ("hello", None, 1),
            ("hello", "not-pep440", 2), ("agent", "2.0", 3)]
    found = version_distribution(rows)
    assert [(v.app, v.version, v.devices) for v in found] == [
        ("agent", "2.0", 3), ("hello", "1.10", 5), ("hello", "1.9", 2),
        ("hello", "not-pep440", 2), ("hello", None, 1)]
    assert [v.share for v in found] == [1.0, 0.5, 0.2, 0.2, 0.1]


def target(rollout_id: int, channel: str = "stable", version: str = "1.1",
           hours_ago: float = 30, **kwargs: object) -> ChannelTarget:
    return ChannelTarget(rollout_id, "hello", channel, version,
                         T0 - timedelta(hours=hours_ago),
                         platforms=frozenset({"linux"}), **kwargs)  # type: ignore[arg-type]


def device(device_id: str, version: str | None, channel: str = "stable",
           platform: str = "linux", **tags: str) -> DeviceRow:
    return DeviceRow(device_id, "hello", channel, platform, version, tags)


def test_channel_targets_keep_the_newest_completed_rollout() -> None:
    targets = channel_targets([target(3, version="1.1"), target(9, version="1.3"),
                               target(5, version="1.2"), target(4, channel="beta")])
    assert {k: t.rollout_id for k, t in targets.items()} == {
        ("hello", "stable"): 9, ("hello", "beta"): 4}


def test_stuck_devices_are_behind_their_channel_target_for_longer_than_n_hours() -> None:
    targets = channel_targets([target(1, version="1.10", hours_ago=30),
                               target(2, channel="beta", version="2.0", hours_ago=5),
                               target(3, channel="eu", version="1.1", hours_ago=50,
                                      group={"region": "eu"})])
    devices = [
        device("a", "1.9"),                    # 1.9 < 1.10 for 30 h: stuck
        device("b", None),                     # never installed anything: stuck
        device("c", "1.10"),                   # on target
        device("d", "1.11"),                   # ahead of it
        device("e", "1.9", platform="arm"),    # no release for its platform
        device("f", "1.0", channel="beta"),    # behind, but only for 5 h
        device("g", "1.0", channel="canary"),  # its channel has no target
        device("h", "1.0", channel="eu", region="eu"),  # in the group: stuck
        device("i", "1.0", channel="eu", region="us"),  # not in the group
    ]
    stuck = stuck_devices(devices, targets, now=T0, hours=24)
    assert [(s.device_id, s.version, s.target_version, s.rollout_id, s.stuck_hours)
            for s in stuck] == [("h", "1.0", "1.1", 3, 50.0), ("a", "1.9", "1.10", 1, 30.0),
                                ("b", None, "1.10", 1, 30.0)]  # by app, channel, device
    # Over 4 h, the beta device is stuck too; sorted by app, channel, then device.
    assert [s.device_id for s in stuck_devices(devices, targets, now=T0, hours=4)] == [
        "f", "h", "a", "b"]
    assert stuck_devices(devices, targets, now=T0, hours=50) == []


# -- failure reasons --------------------------------------------------------------------


def test_top_failure_reasons_by_events_then_text() -> None:
    events = [ev("d1", "download-failed", reason="timeout"),
              ev("d1", "download-failed", reason="  timeout "),
              ev("d2", "download-failed", reason="timeout"),
              ev("d3", "health-failed", reason="exit 3"),
              ev("d4", "verify-failed", reason="hash\nmismatch"),
              ev("d4", "error", reason=""),
              ev("d5", "committed", reason="not a failure"),
              ev("d6", "rolled-back", reason="exit 3")]  # a rollback, counted elsewhere
    reasons = top_failure_reasons(events)
    assert [(r.reason, r.count, r.devices, r.types) for r in reasons] == [
        ("timeout", 3, 2, ("download-failed",)), (NO_REASON, 1, 1, ("error",)),
        ("exit 3", 1, 1, ("health-failed",)), ("hash mismatch", 1, 1, ("verify-failed",))]
    assert len(top_failure_reasons(events, limit=2)) == 2


# -- a rollout's stages -----------------------------------------------------------------


def plan(**changes: object) -> RolloutPlan:
    values: dict[str, object] = {
        "id": 7, "app": "hello", "version": "1.1", "channel": "stable",
        "stages": (10.0, 50.0, 100.0), "stage_index": 1, "stage_started_at": T0,
        "soak": timedelta(hours=1), "min_reports": 5, "max_failure_rate": 0.1,
        "state": RolloutState.ACTIVE}
    values.update(changes)
    return RolloutPlan(**values)  # type: ignore[arg-type]


def test_stage_rows_count_devices_and_outcomes_per_cohort_band() -> None:
    p = plan()
    ids = [f"dev{i}" for i in range(200)]
    band = {i: [d for d in ids if low <= cohort_of(d, "7") < high]
            for i, (low, high) in enumerate([(0, 10), (10, 50), (50, 100)])}
    results = {band[0][0]: Outcome.SUCCEEDED, band[0][1]: Outcome.FAILED,
               band[1][0]: Outcome.SUCCEEDED, band[1][1]: Outcome.SUCCEEDED,
               "never-offered": Outcome.FAILED}
    # Outcomes count in the stage that offered the release to the device.
    offered_at = {d: i for i in (0, 1) for d in band[i][:2]}
    rows = rollout_stage_rows(p, [cohort_of(d, "7") for d in ids], results, offered_at)
    assert [(r.percent, r.state, r.devices, r.succeeded, r.failed) for r in rows] == [
        (10.0, "done", len(band[0]), 1, 1), (50.0, "current", len(band[1]), 2, 0),
        (100.0, "pending", len(band[2]), 0, 0)]
    assert sum(r.devices for r in rows) == 200


@pytest.mark.parametrize(("state", "index", "expected"), [
    (RolloutState.PAUSED, 1, ["done", "paused", "pending"]),
    (RolloutState.ABORTED, 1, ["done", "aborted", "not reached"]),
    (RolloutState.COMPLETED, 2, ["done", "done", "done"]),
    (RolloutState.ACTIVE, 0, ["current", "pending", "pending"]),
])
def test_stage_states_follow_the_rollout(state: RolloutState, index: int,
                                         expected: list[str]) -> None:
    rows = rollout_stage_rows(plan(state=state, stage_index=index), [], {}, {})
    assert [r.state for r in rows] == expected
