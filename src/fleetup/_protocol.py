"""The fleet protocol's vocabulary, shared by the agent and the server (no dependencies).

Why one module: the agent writes these strings and the server's halt rule, analytics,
alerts and dashboard read them. When each side kept its own set ("what counts as a
failure" was declared three times, differently), the rollout page listed failures the
halt rule ignored. Everything here is pure and imports nothing outside the standard
library, so the device side can use it without the server's dependencies.

Outcomes, the one classification (an *update* of a device is its attempts at one
release version; :func:`attempted_version` says which version an event is about):

==================  ==========================================================
``success``         ``committed``
``failure``         ``health-failed``, ``verify-failed``, ``download-failed``, ``error``
``rollback``        ``rolled-back``, ``rollback`` (about the version left behind)
==================  ==========================================================

An update's outcome (:func:`settle`) is ``success`` if it ever committed, else
``failure`` if it failed, else ``rollback``. Counting per device and version — never
per event — keeps one device from outvoting the fleet by repeating a report.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

__all__ = [
    "ANSWER_FIELDS",
    "CHECKIN_FIELDS",
    "EVENT_FIELDS",
    "FAILURE_EVENTS",
    "INTEGRITY_EVENTS",
    "OUTCOME_EVENTS",
    "OUTCOME_OF",
    "ROLLBACK_EVENTS",
    "SUCCESS_EVENTS",
    "CheckinAction",
    "DeviceState",
    "EventType",
    "OutcomeKind",
    "RolloutId",
    "attempted_version",
    "rollout_id_of",
    "settle",
]

# A rollout is named by the server's integer id, on the device as on the server.
RolloutId = int


class EventType(enum.StrEnum):
    """What an agent reports (``type`` of an event); persisted, never renamed."""

    CHECK = "check"
    DOWNLOAD_STARTED = "download-started"
    DOWNLOAD_FINISHED = "download-finished"
    DOWNLOAD_FAILED = "download-failed"
    VERIFY_FAILED = "verify-failed"
    STAGED = "staged"
    SWITCHED = "switched"
    HEALTH_PASSED = "health-passed"
    HEALTH_FAILED = "health-failed"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    ROLLBACK = "rollback"  # an order (operator, fleet server, yank) to go back
    ERROR = "error"
    # The installed release is yanked and nothing this device's policy allows can
    # replace it: it stays, and says so once, so that the server can alert.
    RUNNING_YANKED = "running-yanked"
    SELF_UPDATE_FAILED = "self-update-failed"  # a new agent did not prove itself
    UPDATE_HELD = "update-held"  # staged, but the device's pre-update check said "not now"
    # The release a device runs, re-checked every ``[health] interval``: ``details.ok``.
    # Not an update outcome; the control-group gate (``server._gate``) reads it.
    HEALTH_REPORT = "health-report"


class DeviceState(enum.StrEnum):
    """The agent's update states as a check-in reports them (``agent._lifecycle.State``)."""

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
    READY = "ready"  # staged and waiting to be applied (download-only, apply policy, pre-check)


class CheckinAction(enum.StrEnum):
    """What a check-in answer tells the device to do."""

    NONE = "none"
    INSTALL = "install"
    ROLLBACK = "rollback"


CHECKIN_FIELDS = ("device_id", "app", "platform", "channel", "tags", "version", "state",
                  "kept", "failed")
ANSWER_FIELDS = ("action", "version", "target", "rollout_id", "reason",
                 "next_check_seconds", "flags")
EVENT_FIELDS = ("id", "type", "at", "version", "from_version", "update_id", "rollout_id",
                "reason", "details")


class OutcomeKind(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ROLLBACK = "rollback"


OUTCOME_OF: Mapping[str, OutcomeKind] = {
    EventType.COMMITTED: OutcomeKind.SUCCESS,
    EventType.HEALTH_FAILED: OutcomeKind.FAILURE,
    EventType.VERIFY_FAILED: OutcomeKind.FAILURE,
    EventType.DOWNLOAD_FAILED: OutcomeKind.FAILURE,
    EventType.ERROR: OutcomeKind.FAILURE,
    EventType.ROLLED_BACK: OutcomeKind.ROLLBACK,
    EventType.ROLLBACK: OutcomeKind.ROLLBACK,
}


def _of(kind: OutcomeKind) -> frozenset[str]:
    return frozenset(str(t) for t, k in OUTCOME_OF.items() if k is kind)


SUCCESS_EVENTS = _of(OutcomeKind.SUCCESS)
FAILURE_EVENTS = _of(OutcomeKind.FAILURE)
ROLLBACK_EVENTS = _of(OutcomeKind.ROLLBACK)
OUTCOME_EVENTS = frozenset(str(t) for t in OUTCOME_OF)
INTEGRITY_EVENTS = frozenset({str(EventType.VERIFY_FAILED)})
YANKED_EVENTS = frozenset({str(EventType.RUNNING_YANKED)})


def attempted_version(kind: str, version: str | None, from_version: str | None
                      ) -> str | None:
    """The release an event is about: a rollback event's ``version`` is where the
    device went back to, so it is about the version it left (``from_version``)."""
    return from_version if kind in ROLLBACK_EVENTS else version


def settle(kinds: Iterable[str]) -> OutcomeKind | None:
    """One update's outcome from the types of its events (``None``: nothing final)."""
    seen = {OUTCOME_OF[k] for k in kinds if k in OUTCOME_OF}
    for kind in (OutcomeKind.SUCCESS, OutcomeKind.FAILURE, OutcomeKind.ROLLBACK):
        if kind in seen:
            return kind
    return None


def rollout_id_of(value: object) -> RolloutId | None:
    """A rollout id from the wire or an older journal (which kept it as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value) or None
    return None
