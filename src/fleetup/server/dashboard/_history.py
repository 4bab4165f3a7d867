"""What the dashboard makes of event histories: pure functions over rows already read.

Why: a device's raw history is a dozen events per update, and a rollout's progress is
spread over every device's events. An operator wants one row per update (what, from
what, how it ended, the events folded under it), the releases a device kept, failed or
was never offered, and how many devices ran which version as a rollout went on. All of
it is arithmetic on events, testable without a database or a browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["DeviceReleases", "UpdateRow", "device_releases", "short_hashes", "update_rows",
           "version_timeline"]

# A version becomes the device's when it commits, or when it is rolled back to.
INSTALLED = frozenset({"committed"})
RETURNED = frozenset({"rolled-back", "rollback"})
FAILED = frozenset({"health-failed", "verify-failed", "install-failed", "download-failed",
                    "failed"})
_HEX = re.compile(r"\b[0-9a-fA-F]{13,}\b")


def short_hashes(text: str) -> str:
    """``text`` with every run of more than 12 hex digits cut to its first 12 (a hash
    reads as well by its prefix, as git shows it)."""
    return _HEX.sub(lambda m: m.group(0)[:12] + "…", text)


class EventLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def version(self) -> str | None: ...
    @property
    def from_version(self) -> str | None: ...
    @property
    def update_id(self) -> str | None: ...
    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, slots=True)
class UpdateRow:
    """One update of a device: its events oldest first, and how it ended so far."""

    update_id: str
    version: str | None
    from_version: str | None
    outcome: str  # the type of its last event
    reason: str   # the last non-empty reason
    started: datetime
    ended: datetime
    events: tuple[EventLike, ...]


def update_rows(events: Iterable[EventLike]) -> list[UpdateRow]:
    """Events grouped per update, newest update first. Agents tag each event with its
    update's id; events without one (older agents) are grouped by the version the
    update was about — for a rollback event, the version it left."""
    groups: dict[str, list[EventLike]] = {}
    for event in sorted(events, key=lambda e: (e.received_at, e.at)):
        groups.setdefault(event.update_id or f"to {_target(event) or '?'}", []).append(event)
    rows = []
    for key, members in groups.items():
        reasons = [e.reason for e in members if e.reason]
        rows.append(UpdateRow(
            key, next((_target(e) for e in members if _target(e)), None),
            next((e.from_version for e in members
                  if e.from_version and e.type not in RETURNED), None),
            members[-1].type, reasons[-1] if reasons else "", members[0].at, members[-1].at,
            tuple(members)))
    return sorted(rows, key=lambda r: r.ended, reverse=True)


def _target(event: EventLike) -> str | None:
    return event.from_version if event.type in RETURNED else event.version


@dataclass(frozen=True, slots=True)
class DeviceReleases:
    """The app's releases for this device's platform, by what became of them here."""

    running: str | None
    kept: tuple[str, ...]          # installed here before (kept for a rollback, per policy)
    failed: tuple[tuple[str, str], ...]  # (version, last failure reason)
    not_offered: tuple[tuple[str, str], ...]  # (version, why not)


def device_releases(*, running: str | None, channel: str,
                    releases: Sequence[tuple[str, Sequence[str], bool]],
                    events: Iterable[EventLike]) -> DeviceReleases:
    """Sort ``releases`` — (version, channels, yanked), the app's for the device's
    platform — into kept, failed and not offered, from the device's events."""
    installed: set[str] = set()
    failed: dict[str, str] = {}
    seen: set[str] = set()
    for event in sorted(events, key=lambda e: e.received_at):
        if event.version:
            seen.add(event.version)
        if event.type in INSTALLED and event.version:
            installed.add(event.version)
            failed.pop(event.version, None)  # it failed once, then it worked
        if event.type in FAILED and event.version:
            failed[event.version] = event.reason or event.type
    not_offered = []
    for version, channels, yanked in releases:
        if version == running or version in seen:
            continue
        why = ("yanked" if yanked else f"not in channel {channel}"
               if channels and channel not in channels else "no rollout reached it")
        not_offered.append((version, why))
    return DeviceReleases(running, tuple(sorted(installed - {running or ""} - set(failed))),
                          tuple(sorted(failed.items())), tuple(not_offered))


def version_timeline(initial: Mapping[str, str | None],
                     changes: Iterable[tuple[datetime, str, str]],
                     times: Sequence[datetime]) -> dict[str, list[int]]:
    """How many devices ran each version at each of ``times``: ``initial`` maps each
    device to its version before the first time, ``changes`` are (when, device, version
    it then ran). Versions in first-seen order; ``(none)`` for no version."""
    current: dict[str, str | None] = dict(initial)
    pending = sorted(changes)
    counts: dict[str, list[int]] = {}
    index = 0
    for step, moment in enumerate(times):
        while index < len(pending) and pending[index][0] <= moment:
            _, device, version = pending[index]
            current[device] = version
            index += 1
        for running in current.values():
            counts.setdefault(running or "(none)", [0] * len(times))[step] += 1
    return counts
