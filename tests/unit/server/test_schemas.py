"""The wire model refuses malformed input (a 422 at the API) and ignores unknown fields."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fleetup.server._schemas import CheckinRequest, EventsRequest, RolloutCreate

GOOD = {"device_id": "abc", "app": "hello", "platform": "linux-x86_64", "version": "1.0"}


def test_checkin_defaults_and_unknown_fields() -> None:
    request = CheckinRequest.model_validate({**GOOD, "future_field": 1})
    assert request.channel == "stable"
    assert request.kept == []


@pytest.mark.parametrize("change", [
    {"device_id": ""}, {"device_id": "../etc"}, {"device_id": "x" * 200},
    {"version": "not a version"}, {"app": ""}, {"tags": {"k": 1}}, {"tags": "x"},
    {"kept": ["1.0"] * 101}, {"failed": "1.0"}, {"platform": None},
])
def test_checkin_refuses(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CheckinRequest.model_validate({**GOOD, **change})


@pytest.mark.parametrize("event", [
    {"id": "a", "type": "nope", "at": "2026-01-01T00:00:00Z"},
    {"id": "", "type": "check", "at": "2026-01-01T00:00:00Z"},
    {"id": "a", "type": "check", "at": "yesterday"},
    {"id": "a", "type": "check", "at": "2026-01-01T00:00:00Z", "rollout_id": 0},
])
def test_events_refuse(event: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EventsRequest.model_validate({"events": [event]})


def test_rollout_create_bounds() -> None:
    assert RolloutCreate(app="hello", version="1.1").stages == [1.0, 10.0, 50.0, 100.0]
    for bad in ({"max_failure_rate": 2}, {"stages": [0]}, {"soak_seconds": -1},
                {"bogus": 1}):
        with pytest.raises(ValidationError):
            RolloutCreate.model_validate({"app": "hello", "version": "1.1", **bad})


def _event(**fields: Any) -> dict[str, Any]:
    return {"id": "a", "type": "error", "at": "2026-01-01T00:00:00Z", **fields}


@pytest.mark.parametrize("details", [
    {"blob": "x" * 5000},                       # over 4 KiB as JSON
    {"k" * 101: 1},                             # key too long
    {str(n): n for n in range(51)},             # too many keys
    {"a": {"b": {"c": {"d": {}}}}},             # nested past 4 levels
    {"a": [[["x\x00"]]]},                       # a NUL, however deep
])
def test_event_details_are_bounded(details: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EventsRequest.model_validate({"events": [_event(details=details)]})


def test_deep_input_is_a_validation_error_not_a_recursion_error() -> None:
    nested: dict[str, Any] = {}
    for _ in range(5000):
        nested = {"a": nested}
    with pytest.raises(ValidationError, match="nested deeper than 32"):
        EventsRequest.model_validate({"events": [_event(details=nested)]})


def test_event_batches_are_bounded() -> None:
    EventsRequest.model_validate({"events": [_event(id=str(n)) for n in range(500)]})
    with pytest.raises(ValidationError):
        EventsRequest.model_validate({"events": [_event(id=str(n)) for n in range(501)]})
    fine = {"a": {"b": {"c": "d"}}, "n": [1, 2, 3], "s": "x" * 3000}
    assert EventsRequest.model_validate({"events": [_event(details=fine)]})


def test_every_event_type_the_agent_emits_is_one_the_server_accepts() -> None:
    """A type the agent sends but the server refuses would bounce the whole batch."""
    import re
    from pathlib import Path

    import fleetup.agent
    from fleetup._protocol import EventType
    from fleetup.server._schemas import EVENT_TYPES

    source = "".join(p.read_text() for p in Path(fleetup.agent.__file__).parent.glob("*.py"))
    emitted = set(re.findall(r'AgentEvent\("([a-z-]+)"', source))
    emitted |= set(re.findall(r'"([a-z-]+-failed)" if', source)) | {"download-failed"}
    emitted |= {str(EventType[name]) for name in re.findall(r"EventType\.([A-Z_]+)", source)}
    assert {"update-held", "running-yanked", "staged", "committed"} <= emitted
    assert emitted <= set(EVENT_TYPES)
