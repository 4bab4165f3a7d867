"""The lifecycle tables (pure) and the agent's handlers checked against them.

The handlers in ``_agent.py`` only return events; these tests read that module's source
to list every (state, event) a handler can emit, so a new event added in a handler but
not in ``TRANSITIONS`` fails here, not on a device.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections import deque

import pytest

from fleetup.agent import _agent
from fleetup.agent._lifecycle import (
    FINISH_BEFORE_STOP,
    GIVE_UP,
    MAX_RESUMES,
    RESTING,
    RESUME,
    TRANSITIONS,
    Event,
    Journal,
    Kind,
    State,
    next_state,
    resumed_journal,
)
from fleetup.errors import StateError

S = State

PERSISTED_NAMES = ["idle", "downloading", "verified", "staged", "switched", "health-checking",
                   "committed", "failed", "rolling-back", "rolled-back", "ready"]

BEFORE_SWITCH = {S.DOWNLOADING, S.VERIFIED, S.STAGED}
PAST_SWITCH = {S.SWITCHED, S.HEALTH_CHECKING, S.COMMITTED, S.ROLLING_BACK, S.ROLLED_BACK}


def test_persisted_state_names_are_exactly_the_documented_strings() -> None:
    assert [s.value for s in State] == PERSISTED_NAMES


def test_every_state_reaches_idle() -> None:
    reaches_idle = {S.IDLE}
    changed = True
    while changed:
        changed = False
        for (state, _event), target in TRANSITIONS.items():
            if target in reaches_idle and state not in reaches_idle:
                reaches_idle.add(state)
                changed = True
    assert reaches_idle == set(State)


def test_every_state_is_reachable_from_idle() -> None:
    seen, todo = {S.IDLE}, deque([S.IDLE])
    while todo:
        state = todo.popleft()
        for (source, _event), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(State)


def test_the_happy_path_and_the_failure_paths_follow_the_design() -> None:
    def walk(*events: Event) -> list[State]:
        state, states = S.IDLE, [S.IDLE]
        for event in events:
            state = next_state(state, event)
            states.append(state)
        return states

    e = Event
    assert walk(e.BEGIN, e.DOWNLOADED, e.STAGED, e.SWITCHED, e.RESTARTED, e.HEALTH_PASSED,
                e.RECORDED) == [S.IDLE, S.DOWNLOADING, S.VERIFIED, S.STAGED, S.SWITCHED,
                                S.HEALTH_CHECKING, S.COMMITTED, S.IDLE]
    assert walk(e.BEGIN, e.DOWNLOADED, e.STAGED, e.SWITCHED, e.RESTARTED, e.HEALTH_FAILED,
                e.ROLLED_BACK)[-2:] == [S.ROLLING_BACK, S.ROLLED_BACK]
    assert walk(e.BEGIN, e.DOWNLOAD_FAILED, e.RECORDED)[-2:] == [S.FAILED, S.IDLE]
    assert walk(e.BEGIN, e.DOWNLOADED, e.DELTA_FAILED)[-1] is S.DOWNLOADING
    assert walk(e.ROLLBACK_REQUESTED, e.ROLLED_BACK, e.RECORDED) == [
        S.IDLE, S.ROLLING_BACK, S.ROLLED_BACK, S.IDLE]


def test_an_unknown_transition_is_a_state_error() -> None:
    with pytest.raises(StateError, match="no transition from idle on health-passed"):
        next_state(S.IDLE, Event.HEALTH_PASSED)
    with pytest.raises(StateError):
        next_state(S.COMMITTED, Event.BEGIN)


def test_resume_covers_every_state() -> None:
    assert set(RESUME) == set(State)


@pytest.mark.parametrize("state", sorted(PAST_SWITCH))
def test_resume_never_goes_back_before_the_switch_once_past_it(state: State) -> None:
    assert RESUME[state] not in BEFORE_SWITCH
    assert RESUME[state] is not S.IDLE


@pytest.mark.parametrize("state", [S.SWITCHED, S.HEALTH_CHECKING])
def test_an_interrupted_health_check_resumes_by_rolling_back(state: State) -> None:
    assert RESUME[state] is S.ROLLING_BACK


@pytest.mark.parametrize("state", sorted(BEFORE_SWITCH))
def test_steps_before_the_switch_are_simply_redone(state: State) -> None:
    assert RESUME[state] is state


def test_a_stop_waits_for_every_state_past_the_switch() -> None:
    assert set(FINISH_BEFORE_STOP) == PAST_SWITCH
    assert not (FINISH_BEFORE_STOP & BEFORE_SWITCH)
    assert _agent._ABANDON_ON_STOP == BEFORE_SWITCH


# -- the handlers in _agent.py against the table -----------------------------------------


def _agent_class() -> ast.ClassDef:
    tree = ast.parse(inspect.getsource(_agent))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Agent")


def _methods() -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in _agent_class().body if isinstance(n, ast.FunctionDef)}


def _handler_table() -> dict[State, str]:
    """The ``handlers`` dict literal in ``Agent._run``: state -> method name."""
    run = _methods()["_run"]
    table = next(n.value for n in ast.walk(run)
                 if isinstance(n, ast.AnnAssign | ast.Assign) and isinstance(n.value, ast.Dict))
    assert isinstance(table, ast.Dict)
    handlers = {}
    for key, value in zip(table.keys, table.values, strict=True):
        assert isinstance(key, ast.Attribute)
        assert isinstance(value, ast.Attribute)
        handlers[State[key.attr]] = value.attr
    return handlers


def _events_emitted(method: ast.FunctionDef) -> set[Event]:
    """``Event.X`` passed to ``self._advance`` anywhere in ``method``."""
    events = set()
    for node in ast.walk(method):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_advance"):
            event = node.args[1]
            assert isinstance(event, ast.Attribute), ast.dump(event)
            events.add(Event[event.attr])
    return events


def test_every_state_but_the_resting_ones_has_a_handler() -> None:
    assert {S.IDLE, S.READY} == RESTING
    assert set(_handler_table()) == set(State) - RESTING


def test_every_event_a_handler_emits_is_in_the_table() -> None:
    methods = _methods()
    emitted = set()
    for state, name in _handler_table().items():
        for event in _events_emitted(methods[name]):
            emitted.add((state, event))
    emitted |= {(S.IDLE, e) for e in _events_emitted(methods["_begin_update"])}
    emitted |= {(S.IDLE, e) for e in _events_emitted(methods["_begin_rollback"])}
    emitted |= {(S.READY, e) for e in _events_emitted(methods["_begin_apply"])}
    emitted |= {(S.READY, e) for e in _events_emitted(methods["_drop_staged"])}
    missing = sorted(f"{s} --{e}-->" for s, e in emitted if (s, e) not in TRANSITIONS)
    assert not missing
    # And the table has no rows the handlers never use, except the terminal RECORDED
    # rows (``_record`` writes the idle journal itself).
    unused = {k for k in TRANSITIONS if k not in emitted and k[1] is not Event.RECORDED}
    assert not unused
    assert emitted >= {(S.IDLE, Event.BEGIN), (S.HEALTH_CHECKING, Event.HEALTH_FAILED)}


def test_terminal_states_are_recorded_and_lead_to_idle() -> None:
    handlers = _handler_table()
    for state in (S.COMMITTED, S.FAILED, S.ROLLED_BACK):
        assert handlers[state] == "_record"
        assert TRANSITIONS[(state, Event.RECORDED)] is S.IDLE


# -- the journal --------------------------------------------------------------------------


def test_journal_json_round_trip() -> None:
    journal = Journal(state=S.HEALTH_CHECKING, kind=Kind.UPDATE, update_id="u1", app="hello",
                      installed="1.0", target="1.1", restore="1.0",
                      release={"fleetup": {"kind": "release", "version": "1.1"}},
                      artifact="delta:1.0", artifact_path="/x/y.fdelta", reason="minor update",
                      blame=True, on_purpose=True, rollout_id=7,
                      started_at="2024-01-01T00:00:00+00:00", updated_at="later", resumed=2)
    data = journal.to_json()
    body = json.loads(data)
    assert body["state"] == "health-checking"
    assert body["kind"] == "update"
    assert body["format"] == 1
    assert Journal.from_json(data) == journal


def test_an_older_journal_with_a_text_rollout_id_reads_as_the_integer_id() -> None:
    body = json.loads(Journal(state=S.STAGED, target="1.1").to_json())
    body["rollout_id"] = "7"
    assert Journal.from_json(json.dumps(body).encode()).rollout_id == 7


def test_journal_advance_moves_by_the_table_and_applies_changes() -> None:
    journal = Journal(state=S.DOWNLOADING, target="1.1")
    after = journal.advance(Event.DOWNLOADED, "now", artifact="full")
    assert (after.state, after.artifact, after.updated_at) == (S.VERIFIED, "full", "now")
    with pytest.raises(StateError):
        journal.advance(Event.HEALTH_PASSED, "now")


def test_a_journal_from_an_older_agent_without_new_fields_still_loads() -> None:
    old = json.dumps({"state": "staged", "target": "1.1", "some_future_field": 1}).encode()
    journal = Journal.from_json(old)
    assert (journal.state, journal.kind, journal.target) == (S.STAGED, Kind.UPDATE, "1.1")


@pytest.mark.parametrize("data", [
    b"", b"{not json", b"[]", b"null", b'"idle"', b"7", b'{"target": "1.1"}',
    b'{"state": "exploded"}', b"\xff\xfe", b'{"state": "idle", "resumed": {"a": 1}}'[:30],
    b'{"state": "idle", "kind": "teleport"}', b'{"state": "idle", "resumed": 1, "x": 2}'[:20],
])
def test_a_corrupt_journal_is_a_state_error(data: bytes) -> None:
    with pytest.raises(StateError, match="journal is corrupt"):
        Journal.from_json(data)


# -- the state-loop guard ---------------------------------------------------------------


def test_every_resume_is_counted() -> None:
    journal = Journal(state=S.DOWNLOADING, target="1.1", resumed=2)
    assert resumed_journal(journal, "now").resumed == 3


@pytest.mark.parametrize("state", sorted(set(State) - RESTING))
def test_a_journal_resumed_too_often_gives_up_to_a_state_that_never_runs_the_new_release(
        state: State) -> None:
    journal = Journal(state=state, target="1.1", restore="1.0", resumed=MAX_RESUMES)
    given_up = resumed_journal(journal, "now")
    assert given_up.state is GIVE_UP[state]
    # Past the switch the way back is the only way; before it nothing may move forward.
    assert given_up.state in {S.FAILED, S.ROLLING_BACK, S.IDLE}
    if state in BEFORE_SWITCH - {S.STAGED}:
        assert given_up.state is S.FAILED
        assert given_up.reason.startswith(f"gave up after {MAX_RESUMES} interrupted tries")
    if given_up.state is S.IDLE:
        assert given_up.target is None  # the next run starts clean


def test_staged_and_waiting_is_left_as_it_is_by_a_restart() -> None:
    """A kill while staged and waiting neither switches nor discards: ``ready`` resumes
    as ``ready`` (and is not even counted: nothing was interrupted), and only an apply
    leads on to the switch; the pre-check's "not now" leads back to it, not to failed."""
    assert RESUME[S.READY] is S.READY
    assert S.READY not in FINISH_BEFORE_STOP
    assert {e for (s, e) in TRANSITIONS if s is S.READY} == {Event.APPLY, Event.DISCARDED}
    assert next_state(S.READY, Event.APPLY) is S.STAGED
    assert next_state(S.STAGED, Event.PRE_CHECK_FAILED) is S.READY
    assert next_state(S.STAGED, Event.HOLD) is S.READY
    assert next_state(S.READY, Event.DISCARDED) is S.IDLE


def test_a_journal_staged_to_wait_round_trips() -> None:
    journal = Journal(state=S.READY, target="1.1", hold=True, held="pre-check exited 1",
                      staged_at="t0")
    assert Journal.from_json(journal.to_json()) == journal
    assert json.loads(journal.to_json())["state"] == "ready"


def test_a_journal_under_the_limit_resumes_as_before() -> None:
    journal = Journal(state=S.HEALTH_CHECKING, target="1.1", restore="1.0", blame=True,
                      resumed=MAX_RESUMES - 1)
    resumed = resumed_journal(journal, "now")
    assert (resumed.state, resumed.blame) == (RESUME[S.HEALTH_CHECKING], False)
