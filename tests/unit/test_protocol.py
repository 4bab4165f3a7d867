"""The fleet protocol's one vocabulary: both sides speak it, and it classifies once."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import fleetup._protocol as protocol
from fleetup._protocol import (
    ANSWER_FIELDS,
    CHECKIN_FIELDS,
    EVENT_FIELDS,
    FAILURE_EVENTS,
    OUTCOME_OF,
    ROLLBACK_EVENTS,
    SUCCESS_EVENTS,
    CheckinAction,
    DeviceState,
    EventType,
    OutcomeKind,
    attempted_version,
    rollout_id_of,
    settle,
)
from fleetup.agent._lifecycle import State
from fleetup.server import _analytics, _rollouts
from fleetup.server._schemas import CheckinRequest, CheckinResponse, EventIn


def test_the_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(inspect.getfile(protocol)).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "enum", "collections"}


def test_device_states_are_the_agents_persisted_states() -> None:
    assert [s.value for s in DeviceState] == [s.value for s in State]


def test_the_server_schemas_carry_the_protocols_fields() -> None:
    assert set(CheckinRequest.model_fields) == set(CHECKIN_FIELDS)
    assert set(CheckinResponse.model_fields) == set(ANSWER_FIELDS)
    assert set(EventIn.model_fields) == set(EVENT_FIELDS)
    assert {a.value for a in _rollouts.Action} == {a.value for a in CheckinAction}


def test_one_classification_everywhere() -> None:
    assert set(OUTCOME_OF) <= {t.value for t in EventType}
    assert _analytics.FAILURE_TYPES == FAILURE_EVENTS == _rollouts.FAILURE_EVENTS
    assert _analytics.SUCCESS_TYPES == SUCCESS_EVENTS
    assert _analytics.ROLLBACK_TYPES == ROLLBACK_EVENTS
    assert not FAILURE_EVENTS & SUCCESS_EVENTS
    assert not FAILURE_EVENTS & ROLLBACK_EVENTS


@pytest.mark.parametrize(("kinds", "outcome"), [
    (["download-started", "switched", "committed"], OutcomeKind.SUCCESS),
    (["download-failed", "committed"], OutcomeKind.SUCCESS),
    (["health-failed", "rolled-back"], OutcomeKind.FAILURE),
    (["rollback", "rolled-back"], OutcomeKind.ROLLBACK),
    (["check", "download-started"], None),
])
def test_an_update_settles_to_one_outcome(kinds: list[str], outcome: OutcomeKind | None
                                          ) -> None:
    assert settle(kinds) is outcome


def test_a_rollback_event_is_about_the_version_it_left() -> None:
    assert attempted_version("rolled-back", "1.0", "1.1") == "1.1"
    assert attempted_version("health-failed", "1.1", "1.0") == "1.1"


@pytest.mark.parametrize(("value", "parsed"), [
    (7, 7), ("7", 7), (None, None), ("r-7", None), (0, None), (-3, None), (True, None),
    ("9" * 40, None), (7.0, None)])
def test_rollout_ids_are_integers_on_both_sides(value: object, parsed: int | None) -> None:
    assert rollout_id_of(value) == parsed


def test_every_event_the_agent_emits_is_a_protocol_event_type() -> None:
    import re

    import fleetup.agent._agent as agent
    import fleetup.agent._fleet as fleet

    emitted = {m for module in (agent, fleet)
               for m in re.findall(r'AgentEvent\(\s*"([a-z-]+)"',
                                   Path(inspect.getfile(module)).read_text())}
    assert emitted
    assert emitted <= {t.value for t in EventType}
