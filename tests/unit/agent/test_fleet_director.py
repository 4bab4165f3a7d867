"""The fleet director over a mock transport: a yank with nowhere to go is reported once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetup._facts import ReleaseFacts
from fleetup._versions import UpdateType
from fleetup.agent._choice import RollbackTo
from fleetup.agent._config import AgentConfig
from fleetup.agent._fleet import fleet_parts
from fleetup.errors import FleetupError
from tests.unit.agent.test_choice import NOW, device, rel


class _Source:
    def __init__(self, releases: list[ReleaseFacts]) -> None:
        self._releases = releases

    def releases(self, app: str, platform: str) -> list[ReleaseFacts]:
        return self._releases

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the director should not need {name}")


def _server(answer: dict[str, Any], events: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/enroll"):
            return httpx.Response(201, json={"device_token": "t"})
        if request.url.path.endswith("/events"):
            sent = json.loads(request.content)["events"]
            events.extend(sent)
            return httpx.Response(200, json={"accepted": [e["id"] for e in sent]})
        return httpx.Response(200, json=answer)
    return httpx.MockTransport(handle)


def test_running_a_yanked_release_with_nowhere_to_go_is_reported_once(tmp_path: Path) -> None:
    config = AgentConfig(app="hello", root=tmp_path, trusted_root=tmp_path / "root.json",
                         server_url="http://fleet.invalid/", enrollment_token="e",
                         platform="linux-x86_64")
    events: list[dict[str, Any]] = []
    director, sink = fleet_parts(config, _server({"action": "none"}, events))
    source = _Source([rel("1.1", yanked=True), rel("2.0", type=UpdateType.MAJOR)])
    decision = director.decide(device("1.1"), source, NOW)  # type: ignore[arg-type]
    assert decision.running_yanked == "1.1 was yanked: broken build"
    sink.flush()
    assert [(e["type"], e["version"]) for e in events] == [("running-yanked", "1.1")]
    director.client.store.save_status({"running_yanked": decision.running_yanked})
    director.decide(device("1.1"), source, NOW)  # type: ignore[arg-type]
    sink.flush()
    assert len(events) == 1


def test_a_refused_instruction_still_leaves_a_yanked_release(tmp_path: Path) -> None:
    config = AgentConfig(app="hello", root=tmp_path, trusted_root=tmp_path / "root.json",
                         server_url="http://fleet.invalid/", enrollment_token="e",
                         platform="linux-x86_64")
    director, _ = fleet_parts(config, _server({"action": "install", "version": "1.2",
                                               "rollout_id": 1}, []))
    source = _Source([rel("1.0"), rel("1.1", yanked=True), rel("1.2", channels=("beta",))])
    decision = director.decide(device("1.1", kept=("1.0", "1.1")), source,  # type: ignore[arg-type]
                               NOW)
    assert isinstance(decision, RollbackTo)
    assert decision.version == "1.0"


def test_flags_are_kept_for_the_app_and_choose_nothing(tmp_path: Path) -> None:
    """The answer's flags land in ``.fleetup/flags.json``; flags named like install
    fields change no decision; malformed flags (nested, too long) keep the old ones."""
    config = AgentConfig(app="hello", root=tmp_path, trusted_root=tmp_path / "root.json",
                         server_url="http://fleet.invalid/", enrollment_token="e",
                         platform="linux-x86_64")
    answer: dict[str, Any] = {"action": "none", "flags": {
        "color": "blue", "version": "1.2", "action": "install", "target": "x"}}
    director, _ = fleet_parts(config, _server(answer, []))
    source = _Source([rel("1.1"), rel("1.2")])
    decision = director.decide(device("1.1"), source, NOW)  # type: ignore[arg-type]
    assert not isinstance(decision, RollbackTo)
    assert getattr(decision, "version", None) is None, decision
    stored = json.loads((tmp_path / ".fleetup" / "flags.json").read_text())
    assert stored == answer["flags"]
    for bad in ({"nested": {"a": 1}}, {"long": "x" * 1001}, ["a"], {"1bad": 1}):
        answer["flags"] = bad
        director.decide(device("1.1"), source, NOW)  # type: ignore[arg-type]
        assert director.client.store.load_flags() == stored


def test_the_servers_interval_wins_until_the_server_stops_answering(tmp_path: Path) -> None:
    # issue 15 §4: fleet mode follows next_check_seconds; poll_interval while unreachable.
    config = AgentConfig(app="hello", root=tmp_path, trusted_root=tmp_path / "root.json",
                         server_url="http://fleet.invalid/", enrollment_token="e",
                         platform="linux-x86_64", poll_interval=3600)
    down = False

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/enroll"):
            return httpx.Response(201, json={"device_token": "t"})
        if down:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"action": "none", "next_check_seconds": 7})

    director, _ = fleet_parts(config, httpx.MockTransport(handle))
    source = _Source([rel("1.0")])
    director.decide(device("1.0"), source, NOW)  # type: ignore[arg-type]
    assert director.next_check(config.poll_interval) == 7
    down = True
    with pytest.raises(FleetupError):
        director.decide(device("1.0"), source, NOW)  # type: ignore[arg-type]
    assert director.next_check(config.poll_interval) == 3600
