"""The pure alert logic: rules over fixed fleet facts, backoff, signatures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from fleetup.server._alerts import (
    FleetFacts,
    RolloutHealth,
    Rule,
    RuleKind,
    backoff_seconds,
    encode_body,
    evaluate_rule,
    evaluate_rules,
    sign_body,
)
from fleetup.server._analytics import ChannelTarget, DeviceRow, EventRow
from fleetup.server._rollouts import RolloutState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(hours=1)


def rule(kind: RuleKind, threshold: float = 0.0, min_count: int = 1, app: str | None = None,
         rule_id: int = 1) -> Rule:
    return Rule(rule_id, f"rule {rule_id}", kind, threshold, min_count, CREATED, app)


def health(rollout_id: int, reports: int, failures: int,
           state: RolloutState = RolloutState.ACTIVE, app: str = "hello",
           rollback: bool = False, changed_minutes_ago: float = 5) -> RolloutHealth:
    return RolloutHealth(rollout_id, app, "1.1", "stable", state, reports, failures, rollback,
                         NOW - timedelta(minutes=changed_minutes_ago))


def event(device: str, kind: str, minutes_ago: float = 1, rollout: int | None = None,
          app: str = "hello", version: str = "1.0", from_version: str = "1.1",
          reason: str = "") -> EventRow:
    at = NOW - timedelta(minutes=minutes_ago)
    return EventRow(device, f"{device}-{kind}-{minutes_ago}", kind, at, at, app, version,
                    from_version, None, rollout, reason)


# -- failure rate -----------------------------------------------------------------------


def test_failure_rate_fires_above_the_threshold_with_enough_reports() -> None:
    facts = FleetFacts(NOW, rollouts=[
        health(1, reports=10, failures=2),     # 20 % > 10 %, 10 reports >= 5: fires
        health(2, reports=10, failures=1),     # exactly 10 %: not above
        health(3, reports=4, failures=4),      # 100 %, but only 4 reports
        health(4, reports=8, failures=3, state=RolloutState.PAUSED),  # paused still counts
        health(5, reports=9, failures=9, state=RolloutState.COMPLETED),  # finished: no
        health(6, reports=9, failures=9, app="other"),  # not this rule's app
    ])
    fired = evaluate_rule(rule(RuleKind.FAILURE_RATE, 0.1, 5, app="hello"), facts)
    assert [(f.key, f.details["failures"], f.details["reports"]) for f in fired] == [
        ("rollout:1", 2, 10), ("rollout:4", 3, 8)]
    assert fired[0].severity == "critical"
    assert fired[0].title == ("hello 1.1: failure rate 20.0% in rollout 1 (2 of 10 devices), "
                              "over 10.0%")
    assert fired[1].details["failure_rate"] == pytest.approx(0.375)


def test_failure_rate_needs_at_least_one_report_even_with_min_count_zero() -> None:
    facts = FleetFacts(NOW, rollouts=[health(1, reports=0, failures=0)])
    assert evaluate_rule(rule(RuleKind.FAILURE_RATE, 0.0, 0), facts) == []


# -- stuck devices ----------------------------------------------------------------------


def stuck_facts() -> FleetFacts:
    targets = {("hello", "stable"): ChannelTarget(9, "hello", "stable", "1.2",
                                                  NOW - timedelta(hours=30),
                                                  platforms=frozenset({"linux"})),
               ("hello", "beta"): ChannelTarget(8, "hello", "beta", "2.0",
                                                NOW - timedelta(hours=2),
                                                platforms=frozenset({"linux"}))}
    devices = [DeviceRow(f"s{i}", "hello", "stable", "linux", "1.1") for i in range(3)]
    devices += [DeviceRow("s-new", "hello", "stable", "linux", "1.2"),
                DeviceRow("b0", "hello", "beta", "linux", "1.9")]
    return FleetFacts(NOW, targets=targets, devices=devices)


def test_stuck_devices_fire_once_per_channel_target_with_enough_devices() -> None:
    fired = evaluate_rule(rule(RuleKind.STUCK_DEVICES, 24, 3), stuck_facts())
    assert [(f.key, f.details["devices"], f.details["sample"]) for f in fired] == [
        ("stuck:hello:stable:1.2", 3, ["s0", "s1", "s2"])]
    assert fired[0].title == ("3 hello devices on stable still behind 1.2 more than 24 h "
                              "after rollout 9 completed")
    # Over 1 h the beta device counts too, but alone it is below min_count 3 ...
    assert [f.key for f in evaluate_rule(rule(RuleKind.STUCK_DEVICES, 1, 3),
                                         stuck_facts())] == ["stuck:hello:stable:1.2"]
    # ... and with min_count 1 it fires for its own channel.
    assert [f.key for f in evaluate_rule(rule(RuleKind.STUCK_DEVICES, 1, 1),
                                         stuck_facts())] == ["stuck:hello:beta:2.0",
                                                             "stuck:hello:stable:1.2"]
    assert evaluate_rule(rule(RuleKind.STUCK_DEVICES, 31, 1), stuck_facts()) == []
    assert evaluate_rule(rule(RuleKind.STUCK_DEVICES, 1, 1, app="other"), stuck_facts()) == []


# -- rollbacks --------------------------------------------------------------------------


def test_rollbacks_fire_once_per_rollout_or_version_left() -> None:
    facts = FleetFacts(NOW, rollouts=[
        health(3, 0, 0, RolloutState.ABORTED, rollback=True),           # the operator's
        health(4, 0, 0, RolloutState.ABORTED, rollback=False),          # abort, no rollback
        health(5, 0, 0, RolloutState.ABORTED, rollback=True, changed_minutes_ago=120),  # old
    ], events=[
        event("d1", "rolled-back", rollout=3),   # the same rollout: the same alert
        event("d2", "rolled-back", rollout=7, reason="exit 3"),
        event("d3", "rolled-back", rollout=7),
        event("d4", "rollback", rollout=None, from_version="1.1"),
        event("d5", "rolled-back", rollout=None, from_version="1.1"),
        event("d6", "rolled-back", rollout=9, minutes_ago=90),  # before the rule existed
        event("d7", "health-failed", rollout=8),                # not a rollback
    ])
    fired = evaluate_rule(rule(RuleKind.ROLLBACK), facts)
    assert [(f.key, f.details["cause"]) for f in fired] == [
        ("rollout:3:rollback", "operator"), ("rollout:7:rollback", "device"),
        ("version:hello:1.1:rollback", "device")]
    assert fired[1].details["devices"] == 2
    assert fired[1].title == "hello: 2 devices rolled back from 1.1 (rollout 7)"
    assert fired[2].details["sample"] == ["d4", "d5"]


# -- integrity --------------------------------------------------------------------------


def test_integrity_failures_fire_per_device_and_version() -> None:
    facts = FleetFacts(NOW, events=[
        event("d1", "verify-failed", version="1.2", reason="hash mismatch"),
        event("d1", "verify-failed", minutes_ago=2, version="1.2", reason="again"),
        event("d2", "verify-failed", version="1.2", reason="bad signature", app="other"),
        event("d3", "download-failed", version="1.2", reason="timeout"),
    ])
    fired = evaluate_rule(rule(RuleKind.INTEGRITY_FAILURE), facts)
    assert [(f.key, f.app, f.severity) for f in fired] == [
        ("integrity:d1:1.2", "hello", "critical"), ("integrity:d2:1.2", "other", "critical")]
    assert fired[0].title == "hello: device d1 refused 1.2: hash mismatch"
    only_hello = evaluate_rule(rule(RuleKind.INTEGRITY_FAILURE, app="hello"), facts)
    assert [f.key for f in only_hello] == ["integrity:d1:1.2"]


def test_a_device_left_on_a_yanked_release_fires_once_per_device_and_version() -> None:
    facts = FleetFacts(NOW, events=[
        event("d1", "running-yanked", version="1.1", reason="no release the policy allows"),
        event("d1", "running-yanked", minutes_ago=3, version="1.1"),
        event("d2", "committed", version="1.1"),
        event("d3", "running-yanked", minutes_ago=120, version="1.1"),  # before the rule
    ])
    fired = evaluate_rule(rule(RuleKind.RUNNING_YANKED), facts)
    assert [(f.key, f.severity) for f in fired] == [("yanked:d1:1.1", "warning")]
    assert fired[0].title == "hello: device d1 runs the yanked 1.1 and has nowhere to go"


def test_every_rule_is_evaluated_with_its_own_id() -> None:
    facts = FleetFacts(NOW, rollouts=[health(1, 10, 5)],
                       events=[event("d1", "verify-failed", version="1.1")])
    fired = evaluate_rules([rule(RuleKind.FAILURE_RATE, 0.2, 1, rule_id=10),
                            rule(RuleKind.FAILURE_RATE, 0.6, 1, rule_id=11),
                            rule(RuleKind.INTEGRITY_FAILURE, rule_id=12)], facts)
    assert [(f.rule_id, f.key) for f in fired] == [(10, "rollout:1"), (12, "integrity:d1:1.1")]


# -- delivery ---------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "rand", "expected"), [
    (1, 0.0, 1.0), (1, 0.999, 1.999),      # first retry: between 1 and 2 s (base 2)
    (2, 0.0, 2.0), (3, 0.5, 6.0),          # 4 s -> [2, 4); 8 s -> [4, 8)
    (10, 0.0, 30.0), (10, 1.0, 60.0),      # capped at 60 s -> [30, 60]
    (1000, 0.5, 45.0),                     # no overflow far past the cap
])
def test_backoff_is_exponential_capped_with_equal_jitter(attempts: int, rand: float,
                                                         expected: float) -> None:
    assert backoff_seconds(attempts, base=2, cap=60, rand=rand) == pytest.approx(expected)


def test_the_signature_is_an_hmac_of_the_exact_body() -> None:
    body = encode_body({"b": 1, "a": [1, 2]})
    assert body == b'{"a":[1,2],"b":1}'
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign_body("k", body) == f"sha256={expected}"
    assert sign_body("other", body) != sign_body("k", body)
