"""Release and delta facts (what rides signed in TUF ``custom``), rollouts, target names."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

from fleetup._facts import (
    DeltaFacts,
    HealthSpec,
    PhasedRollout,
    ReleaseFacts,
    check_name,
    default_platform,
    delta_target_path,
    index_target_path,
    parse_index,
    release_target_path,
    render_index,
)
from fleetup._versions import UpdateType
from fleetup.errors import RepositoryError, UsageError

START = datetime(2025, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def full_facts() -> ReleaseFacts:
    return ReleaseFacts(
        app="hello", version="1.10.0", platform="linux-x86_64", channels=("stable", "beta"),
        update_type=UpdateType.SECURITY, tree_digest="sha256:" + "ab" * 32, tree_size=1234,
        tree_entries=7, published="2025-01-01T00:00:00+00:00", notes="fixes CVE-1",
        health=HealthSpec(("bin/health", "--quick"), "http://127.0.0.1:8080/", 12.0),
        min_from="1.2.0", rollout=PhasedRollout.parse("10,50@1h,100@1d", START),
        extra={"build": "abc", "n": 3})


def through_signed_json(custom: dict[str, Any]) -> dict[str, Any]:
    """What a device reads back: the custom field after TUF's own (canonical) JSON."""
    target = TargetFile(10, {"sha256": "00" * 32}, "x", {"custom": custom})
    md = Metadata(Targets(targets={"x": target}))
    CanonicalJSONSerializer().serialize(md.signed)       # refuses floats, as signing does
    back = Metadata.from_bytes(md.to_bytes(JSONSerializer()))
    parsed = back.signed.targets["x"].custom              # type: ignore[attr-defined]
    assert isinstance(parsed, dict)
    return parsed


# -- ReleaseFacts ---------------------------------------------------------------------------


def test_release_facts_round_trip_through_signed_json() -> None:
    facts = full_facts()
    again = ReleaseFacts.from_custom(through_signed_json(facts.to_custom()), "x")
    assert again == facts
    assert again.parsed_version > ReleaseFacts.from_custom(
        through_signed_json(
            ReleaseFacts(**{**_fields(facts), "version": "1.9.0"}).to_custom())).parsed_version


def test_minimal_release_facts_round_trip() -> None:
    facts = ReleaseFacts("a", "1.0", "p", ("stable",), UpdateType.MAJOR, "sha256:x", 0, 0, "")
    assert ReleaseFacts.from_custom(through_signed_json(facts.to_custom())) == facts
    assert "extra" not in facts.to_custom()["fleetup"]


def test_yank_keeps_everything_else() -> None:
    facts = full_facts()
    yanked = facts.yank("crashes on boot")
    assert (yanked.yanked, yanked.yank_reason) == (True, "crashes on boot")
    assert {**_fields(yanked), "yanked": False, "yank_reason": ""} == _fields(facts)
    body = ReleaseFacts.from_custom(through_signed_json(yanked.to_custom()))
    assert body.yanked
    assert body.yank_reason == "crashes on boot"


def test_health_timeout_is_signed_as_whole_seconds_rounded_up() -> None:
    assert HealthSpec((), None, 0.2).to_dict()["timeout"] == 1
    assert HealthSpec((), None, 30.5).to_dict()["timeout"] == 31
    assert HealthSpec((), None, 30.0).to_dict()["timeout"] == 30


def test_target_paths_and_names() -> None:
    facts = full_facts()
    assert facts.target_path == "hello/linux-x86_64/hello-1.10.0.tar.zst"
    assert release_target_path("a", "p", "1") == "a/p/a-1.tar.zst"
    assert delta_target_path("a", "p", "1", "2") == "a/p/deltas/a-1_to_2.fdelta"
    assert index_target_path("a", "p") == "a/p/index.json"
    assert re.fullmatch(r"[a-z0-9]+-[a-z0-9_]+", default_platform())
    assert check_name("app", "my-app.v2_x+y") == "my-app.v2_x+y"


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "a/b", "a b", "ü", "x" * 101, "../x"])
def test_bad_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="invalid app name"):
        check_name("app", name)


def _fields(facts: ReleaseFacts) -> dict[str, Any]:
    return {name: getattr(facts, name) for name in ReleaseFacts.__dataclass_fields__}


def _body() -> dict[str, Any]:
    return copy.deepcopy(full_facts().to_custom()["fleetup"])


MALFORMED: dict[str, Any] = {
    "no-fleetup-key": lambda b: {"other": b},
    "not-a-mapping": lambda b: {"fleetup": "release"},
    "wrong-kind": lambda b: {"fleetup": {**b, "kind": "delta"}},
    "no-kind": lambda b: {"fleetup": {k: v for k, v in b.items() if k != "kind"}},
    "no-version": lambda b: {"fleetup": {k: v for k, v in b.items() if k != "version"}},
    "bad-version": lambda b: {"fleetup": {**b, "version": "latest"}},
    "bad-app": lambda b: {"fleetup": {**b, "app": "../etc"}},
    "bad-channel": lambda b: {"fleetup": {**b, "channels": ["ok", "not ok"]}},
    "channels-not-list": lambda b: {"fleetup": {**b, "channels": 5}},
    "bad-type": lambda b: {"fleetup": {**b, "type": "mega"}},
    "tree-not-object": lambda b: {"fleetup": {**b, "tree": "sha256:x"}},
    "negative-size": lambda b: {"fleetup": {**b, "tree": {**b["tree"], "size": -1}}},
    "bool-entries": lambda b: {"fleetup": {**b, "tree": {**b["tree"], "entries": True}}},
    "string-size": lambda b: {"fleetup": {**b, "tree": {**b["tree"], "size": "10"}}},
    "health-command-string": lambda b: {"fleetup": {**b, "health": {"command": "rm -rf /"}}},
    "health-timeout-zero": lambda b: {"fleetup": {**b, "health": {"timeout": 0}}},
    "health-timeout-huge": lambda b: {"fleetup": {**b, "health": {"timeout": 10**400}}},
    "health-url-number": lambda b: {"fleetup": {**b, "health": {"url": 5}}},
    "rollout-no-steps": lambda b: {"fleetup": {**b, "rollout": {"start": "2025-01-01"}}},
    "rollout-bad-start": lambda b: {"fleetup": {**b, "rollout": {"start": "soon",
                                                                  "steps": []}}},
    "rollout-decreasing": lambda b: {"fleetup": {**b, "rollout": {
        "start": "2025-01-01", "steps": [[0, 5000], [10, 1000]]}}},
    "rollout-over-100": lambda b: {"fleetup": {**b, "rollout": {
        "start": "2025-01-01", "steps": [[0, 20000]]}}},
    "rollout-huge-offset": lambda b: {"fleetup": {**b, "rollout": {
        "start": "2025-01-01", "steps": [[10**30, 100]]}}},
    "extra-not-mapping": lambda b: {"fleetup": {**b, "extra": [1, 2, 3]}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_release_facts_are_repository_errors(case: str) -> None:
    custom = MALFORMED[case](_body())
    with pytest.raises(RepositoryError, match=r"hello/x\.tar\.zst"):
        ReleaseFacts.from_custom(custom, "hello/x.tar.zst")


def test_missing_custom_is_a_repository_error() -> None:
    with pytest.raises(RepositoryError, match="carries no fleetup release facts"):
        ReleaseFacts.from_custom(None, "t")


# -- DeltaFacts -------------------------------------------------------------------------------


def test_delta_facts_round_trip() -> None:
    delta = DeltaFacts("hello", "p", "1.0", "1.1", "hello/p/hello-1.1.tar.zst", "fleetup-delta/1")
    assert DeltaFacts.from_custom(through_signed_json(delta.to_custom())) == delta
    assert delta.target_path == "hello/p/deltas/hello-1.0_to_1.1.fdelta"


@pytest.mark.parametrize("custom", [
    None, {}, {"fleetup": {"kind": "release"}},
    {"fleetup": {"kind": "delta", "app": "a", "platform": "p", "from": "1", "to": "2"}},
])
def test_malformed_delta_facts_are_repository_errors(custom: dict[str, Any] | None) -> None:
    with pytest.raises(RepositoryError):
        DeltaFacts.from_custom(custom, "d")


# -- PhasedRollout -----------------------------------------------------------------------------


def test_parse_units_and_percent_at_every_boundary() -> None:
    rollout = PhasedRollout.parse("5, 25@30m, 50@2h, 75@1d, 100@172800", START)
    assert rollout.steps == (
        (timedelta(0), 5.0), (timedelta(minutes=30), 25.0), (2 * HOUR, 50.0),
        (timedelta(days=1), 75.0), (timedelta(days=2), 100.0))
    assert rollout.percent_at(START - timedelta(seconds=1)) == 0.0
    assert rollout.percent_at(START) == 5.0
    assert rollout.percent_at(START + timedelta(minutes=29, seconds=59)) == 5.0
    assert rollout.percent_at(START + timedelta(minutes=30)) == 25.0
    assert rollout.percent_at(START + timedelta(days=1, seconds=-1)) == 50.0
    assert rollout.percent_at(START + timedelta(days=2)) == 100.0
    assert rollout.percent_at(START + timedelta(days=400)) == 100.0


def test_fractional_percent_and_seconds() -> None:
    rollout = PhasedRollout.parse("0.5,12.25@90s,100@1.5h", START)
    assert rollout.percent_at(START + timedelta(seconds=90)) == 12.25
    assert rollout.steps[2][0] == timedelta(minutes=90)


@pytest.mark.parametrize("text", [
    "", "abc", "10@xh", "0", "-5", "101", "nan", "inf", "50,40@1h", "10@2h,20@1h",
    "10,20", "10@1h,20@1h", "10@1e30d", "10@nanh", "10;20@1h",
])
def test_bad_schedules_are_one_line_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        PhasedRollout.parse(text, START)
    assert "\n" not in str(info.value)


def test_rollout_signed_form_has_no_floats_and_round_trips() -> None:
    rollout = PhasedRollout.parse("12.34,50@1h,100@2d", START)
    signed = rollout.to_dict()
    assert signed == {"start": "2025-01-01T00:00:00+00:00",
                      "steps": [[0, 1234], [3600, 5000], [172800, 10000]]}
    assert PhasedRollout.from_dict(json.loads(json.dumps(signed))) == rollout


def test_rollout_without_timezone_is_utc() -> None:
    rollout = PhasedRollout.from_dict({"start": "2025-01-01T00:00:00", "steps": [[0, 100]]})
    assert rollout.start == START


steps = st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 10000)), min_size=1,
                 max_size=6)


@given(steps, st.integers(-10**6, 2 * 10**6))
def test_percent_at_is_the_last_step_reached(raw: list[tuple[int, int]], offset: int) -> None:
    offsets = sorted({o for o, _ in raw})
    percents = sorted({p for _, p in raw})[: len(offsets)]
    offsets = offsets[: len(percents)]
    rollout = PhasedRollout.from_dict({"start": START.isoformat(),
                                       "steps": [list(s) for s in zip(offsets, percents,
                                                                      strict=True)]})
    now = START + timedelta(seconds=offset)
    reached = [p / 100 for o, p in zip(offsets, percents, strict=True) if offset >= o]
    assert rollout.percent_at(now) == (reached[-1] if reached else 0.0)
    later = rollout.percent_at(now + HOUR)
    assert later >= rollout.percent_at(now)          # never shrinks as time passes


# -- the index --------------------------------------------------------------------------------


def test_index_round_trip_is_sorted_and_stable() -> None:
    names = ["a/p/a-1.10.0.tar.zst", "a/p/a-1.9.0.tar.zst"]
    data = render_index("a", "p", names)
    assert data == render_index("a", "p", list(reversed(names)))
    assert parse_index(data) == sorted(names)
    assert json.loads(data)["format"] == 1


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"releases": "x"}',
                                  b'{"releases": [1, 2]}', b"\xff"])
def test_malformed_index_is_a_repository_error(data: bytes) -> None:
    with pytest.raises(RepositoryError, match="malformed release index"):
        parse_index(data)
