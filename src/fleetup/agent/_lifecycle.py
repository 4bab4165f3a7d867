"""The update lifecycle as data: states, events, the transition table, the resume table.

Pure: no IO. The state is persisted *before* its handler runs (see ``_journal.py``);
handlers only return events, and this table alone says where each event leads. The
state names are persisted strings and must never change (devices in the field have
them on disk).

::

    idle ─BEGIN─▶ downloading ─DOWNLOADED─▶ verified ─STAGED─▶ staged ─SWITCHED─▶ switched
                      │                        │  ▲                │                 │
              DOWNLOAD_FAILED            STAGE_FAILED│DELTA_FAILED  SWITCH_FAILED   RESTARTED
                      ▼                        ▼  └─(back to downloading, full archive)
                    failed ◀───────────────────┘                   │                 ▼
                      │                                            ▼          health-checking
                  RECORDED → idle                                failed      │          │
                                                                  HEALTH_PASSED    HEALTH_FAILED
                                                                        ▼                ▼
    idle ─ROLLBACK_REQUESTED─▶ rolling-back ◀──RESTART_FAILED── switched   committed   rolling-back
                                    │                                         │          │
                               ROLLED_BACK ─▶ rolled-back ─RECORDED─▶ idle  RECORDED → idle

Staged and waiting (``update --download-only``, ``[policy] apply``, a pre-update check
that said "not now") is a resting state of its own, like idle::

    staged ─HOLD / PRE_CHECK_FAILED─▶ ready ─APPLY─▶ staged        (``agent apply``)
                                        └──DISCARDED─▶ idle       (a newer or no release)
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fleetup._protocol import RolloutId, rollout_id_of
from fleetup.errors import StateError

__all__ = ["GIVE_UP", "JOURNAL_FORMAT", "MAX_RESUMES", "RESTING", "RESUME", "TRANSITIONS",
           "Event", "Journal", "Kind", "State", "next_state", "resumed_journal"]


class State(enum.StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    STAGED = "staged"
    SWITCHED = "switched"
    HEALTH_CHECKING = "health-checking"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    READY = "ready"  # staged and waiting to be applied: a resting state, like idle


class Event(enum.StrEnum):
    BEGIN = "begin"
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download-failed"
    STAGED = "staged"
    STAGE_FAILED = "stage-failed"
    DELTA_FAILED = "delta-failed"
    SWITCHED = "switched"
    SWITCH_FAILED = "switch-failed"
    RESTARTED = "restarted"
    RESTART_FAILED = "restart-failed"
    HEALTH_PASSED = "health-passed"
    HEALTH_FAILED = "health-failed"
    ROLLBACK_REQUESTED = "rollback-requested"
    ROLLED_BACK = "rolled-back"
    RECORDED = "recorded"
    HOLD = "hold"                            # staged on purpose, to apply later
    PRE_CHECK_FAILED = "pre-check-failed"    # the device said "not now": held, not blamed
    APPLY = "apply"
    DISCARDED = "discarded"


S, E = State, Event

TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (S.IDLE, E.BEGIN): S.DOWNLOADING,
    (S.IDLE, E.ROLLBACK_REQUESTED): S.ROLLING_BACK,
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFIED,
    (S.DOWNLOADING, E.DOWNLOAD_FAILED): S.FAILED,
    (S.VERIFIED, E.STAGED): S.STAGED,
    (S.VERIFIED, E.STAGE_FAILED): S.FAILED,
    (S.VERIFIED, E.DELTA_FAILED): S.DOWNLOADING,
    (S.STAGED, E.SWITCHED): S.SWITCHED,
    (S.STAGED, E.SWITCH_FAILED): S.FAILED,
    (S.SWITCHED, E.RESTARTED): S.HEALTH_CHECKING,
    (S.SWITCHED, E.RESTART_FAILED): S.ROLLING_BACK,
    (S.HEALTH_CHECKING, E.HEALTH_PASSED): S.COMMITTED,
    (S.HEALTH_CHECKING, E.HEALTH_FAILED): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.ROLLED_BACK,
    (S.COMMITTED, E.RECORDED): S.IDLE,
    (S.FAILED, E.RECORDED): S.IDLE,
    (S.ROLLED_BACK, E.RECORDED): S.IDLE,
    (S.STAGED, E.HOLD): S.READY,
    (S.STAGED, E.PRE_CHECK_FAILED): S.READY,
    (S.READY, E.APPLY): S.STAGED,
    (S.READY, E.DISCARDED): S.IDLE,
}

# States a cycle ends in without having finished: nothing runs in them, and a run that
# finds one has nothing to resume (``ready`` waits for ``apply`` or the next cycle).
RESTING = frozenset({S.IDLE, S.READY})

# Where a run that was killed in a state continues. Everything before the switch is
# simply redone (handlers are idempotent; downloads resume from their .part file).
# After the switch the health check was interrupted: go back to the old version
# without blaming the release (``blame`` stays False), and the same ``update`` then
# tries again from the start.
RESUME: Mapping[State, State] = {
    S.IDLE: S.IDLE,
    S.DOWNLOADING: S.DOWNLOADING,
    S.VERIFIED: S.VERIFIED,
    S.STAGED: S.STAGED,
    S.SWITCHED: S.ROLLING_BACK,
    S.HEALTH_CHECKING: S.ROLLING_BACK,
    S.COMMITTED: S.COMMITTED,
    S.FAILED: S.FAILED,
    S.ROLLING_BACK: S.ROLLING_BACK,
    S.ROLLED_BACK: S.ROLLED_BACK,
    # Staged and waiting: a kill here neither switches nor discards; the tree is
    # complete and verified, and stays until ``apply`` or a newer release.
    S.READY: S.READY,
}

# The state-loop guard (Mender's): a cycle that was resumed more than MAX_RESUMES times
# keeps dying in the same place (a crash in a handler, a clean-up that cannot finish),
# and resuming it again would lock the device out of updates for good. It goes where
# GIVE_UP says instead, so the next run starts clean.
MAX_RESUMES = 5
GIVE_UP: Mapping[State, State] = {
    S.IDLE: S.IDLE,
    S.DOWNLOADING: S.FAILED,      # nothing was switched; a .part is kept to resume from
    S.VERIFIED: S.FAILED,
    S.STAGED: S.ROLLING_BACK,     # ``current`` may already point at the new tree
    S.SWITCHED: S.ROLLING_BACK,
    S.HEALTH_CHECKING: S.ROLLING_BACK,
    S.ROLLING_BACK: S.ROLLING_BACK,  # the way back to a working version is never dropped
    S.COMMITTED: S.IDLE,          # recording keeps failing: drop the record, not the device
    S.FAILED: S.IDLE,
    S.ROLLED_BACK: S.IDLE,
    S.READY: S.READY,             # never resumed (a resting state), so never given up on
}

# States in which a stop request waits for the step to finish: the app is switched
# and must end committed or rolled back, not half way.
FINISH_BEFORE_STOP = frozenset({S.SWITCHED, S.HEALTH_CHECKING, S.COMMITTED,
                                S.ROLLING_BACK, S.ROLLED_BACK})


def next_state(state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``.

    Raises:
        StateError: the table has no such transition (a bug, or a corrupt journal).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise StateError(f"no transition from {state} on {event}") from None


def resumed_journal(journal: Journal, now: str) -> Journal:
    """The journal a run continues with, having found ``journal`` unfinished: counted as
    one more resume, moved by ``RESUME`` (or by ``GIVE_UP`` past ``MAX_RESUMES``)."""
    resumed = journal.resumed + 1
    state = journal.state
    if resumed > MAX_RESUMES:
        target = GIVE_UP[state]
        reason = (f"gave up after {MAX_RESUMES} interrupted tries in {state}"
                  + (f" ({journal.reason})" if journal.reason else ""))
    elif RESUME[state] is not state:
        target = RESUME[state]
        reason = f"interrupted in {state}: back to {journal.restore or 'nothing installed'}"
    else:
        return replace(journal, resumed=resumed, updated_at=now)
    if target is S.IDLE:
        return Journal(updated_at=now, reason=reason)
    return replace(journal, state=target, reason=reason, blame=False, resumed=resumed,
                   updated_at=now)


# The journal's format: fields may be added within a format (readers ignore the ones
# they do not know, so the previous agent reads what the next one wrote after a
# rollback); a change an older reader would misread raises the format, and a reader
# refuses a format above its own with one clear line instead of guessing.
JOURNAL_FORMAT = 1


def _check_format(found: object, what: str, supported: int = JOURNAL_FORMAT) -> None:
    """Raises StateError if ``found`` is not a format this fleetup reads."""
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise StateError(f"the {what} has no valid format number: {found!r}")
    if found > supported:
        raise StateError(f"the {what} was written by a newer fleetup (format {found}); "
                         f"this one reads format {supported} and older: update fleetup "
                         f"or remove the file")


class Kind(enum.StrEnum):
    UPDATE = "update"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Journal:
    """One update or rollback in progress: everything needed to resume it offline.

    ``installed`` is what ``current`` pointed to when the cycle began; ``target`` the
    version it moves to; ``restore`` the version a rollback returns to (``None``: remove
    ``current``, as after a failed first install). ``release`` is the target's signed
    facts (as in TUF ``custom``), kept so a resumed cycle needs no network. ``retire``
    names a yanked release whose tree is removed once the cycle has moved off it.
    ``hold`` stops the cycle at ``ready`` once staged (apply later); ``held`` is why a
    pre-update check held it back there; ``staged_at`` when its tree was staged.
    """

    state: State = State.IDLE
    kind: Kind = Kind.UPDATE
    update_id: str = ""
    app: str = ""
    installed: str | None = None
    target: str | None = None
    restore: str | None = None
    release: Mapping[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    artifact_path: str | None = None
    reason: str = ""
    blame: bool = False
    on_purpose: bool = False
    rollout_id: RolloutId | None = None
    retire: str | None = None
    started_at: str = ""
    updated_at: str = ""
    resumed: int = 0
    hold: bool = False
    held: str = ""
    staged_at: str = ""

    def advance(self, event: Event, now: str, **changes: Any) -> Journal:
        """The journal after ``event``, with field ``changes`` applied."""
        return replace(self, state=next_state(self.state, event), updated_at=now, **changes)

    def to_json(self) -> bytes:
        body = asdict(self)
        body["state"] = self.state.value
        body["kind"] = self.kind.value
        body["format"] = JOURNAL_FORMAT
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Journal:
        """Raises StateError if ``data`` is not a journal."""
        try:
            body = json.loads(data)
            if not isinstance(body, dict):
                raise TypeError("not a JSON object")
            _check_format(body.pop("format", 1), "update journal")
            body["state"] = State(body["state"])
            body["kind"] = Kind(body.get("kind", "update"))
            # Journals of older agents kept the rollout id as text.
            body["rollout_id"] = rollout_id_of(body.get("rollout_id"))
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in body.items() if k in known})
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"the update journal is corrupt: {e}") from e
