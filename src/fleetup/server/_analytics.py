"""Fleet analytics: what operators ask of the events and the inventory.

Why a module of its own: the figures (success and rollback rates, version
distribution, time to update, stuck devices, failure reasons, a rollout's per-stage
counts) are read by three consumers — the ``/api/v1/analytics`` routes, the dashboard
and the alert rules — and must mean the same thing in all three. So each figure is one
**pure** function over plain rows (unit-tested with hand-computed expectations), and a
few keyword-only queries below them load those rows.

Definitions (documented here once, shown in the API's descriptions):

- An **update** is a device's attempts at one release version (the classification is
  :mod:`fleetup._protocol`'s, shared with the halt rule and the alerts): a device that
  retries, or repeats a report a hundred times, is still one update. An update
  **succeeded** if it reported ``committed`` and **failed** if it reported
  ``health-failed``, ``verify-failed``, ``download-failed`` or ``error`` (and did not
  commit). A **rollback** is an update that reported ``rolled-back`` (the agent went
  back after a failed health check, or on an operator's order) or ``rollback``, about
  the version it left. An event naming no version is an update of its own.
  Rates are shares of updates: ``succeeded / updates``, ``failed / updates``,
  ``rollbacks / updates``; ``None`` when there were no updates.
- Windows and hourly buckets use ``received_at`` (the server's clock): a device's clock
  may be wrong, and a report queued offline counts when it arrives.
- **Time to update**: ``install_seconds`` is, per device and attempt, from its first
  ``download-started`` to ``committed`` (both on the device's clock, so skew cancels);
  ``rollout_seconds`` is from a rollout's start to each device's ``committed`` report
  (server clock). Percentiles are nearest-rank: the smallest value with at least p % of
  the values at or below it (no interpolation, so every figure is a real measurement).
- A device is **stuck** when its channel has a target — the newest completed rollout of
  its app and channel, whose group it matches and which has a release for its platform —
  and it still runs an older version (or none) more than N hours after that rollout
  completed.
- **Failure reasons** are the ``reason`` texts of failure events, whitespace collapsed,
  counted per event, with the number of distinct devices that reported each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from packaging.version import InvalidVersion, Version
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from fleetup._protocol import (
    FAILURE_EVENTS,
    INTEGRITY_EVENTS,
    OUTCOME_EVENTS,
    ROLLBACK_EVENTS,
    SUCCESS_EVENTS,
    attempted_version,
)
from fleetup.server._models import Device, Event, Release, Rollout
from fleetup.server._rollouts import Outcome, RolloutPlan, RolloutState, matches_group

__all__ = [
    "FAILURE_TYPES",
    "INTEGRITY_TYPES",
    "NO_REASON",
    "RATE_TYPES",
    "ROLLBACK_TYPES",
    "SUCCESS_TYPES",
    "ChannelTarget",
    "DeviceRow",
    "EventRow",
    "HourRates",
    "Percentiles",
    "Rates",
    "ReasonCount",
    "StageRow",
    "StuckDevice",
    "VersionCount",
    "channel_targets",
    "failure_reasons_report",
    "hourly_rates",
    "install_seconds",
    "normalize_reason",
    "percentile",
    "percentiles",
    "rates_report",
    "recent_events",
    "rollout_seconds",
    "rollout_stage_rows",
    "rollout_starts",
    "stuck_devices",
    "stuck_inputs",
    "stuck_report",
    "time_to_update_report",
    "top_failure_reasons",
    "update_rates",
    "version_counts",
    "version_distribution",
]

# The protocol's one classification, under the names the dashboard and alerts import.
SUCCESS_TYPES = SUCCESS_EVENTS
FAILURE_TYPES = FAILURE_EVENTS
ROLLBACK_TYPES = ROLLBACK_EVENTS
INTEGRITY_TYPES = INTEGRITY_EVENTS
RATE_TYPES = OUTCOME_EVENTS
NO_REASON = "(no reason given)"


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event with its device's app: what every figure here is computed from."""

    device_id: str
    event_id: str
    type: str
    at: datetime
    received_at: datetime
    app: str = ""
    version: str | None = None
    from_version: str | None = None
    update_id: str | None = None
    rollout_id: int | None = None
    reason: str = ""


def _attempt(event: EventRow) -> tuple[str, str]:
    return event.device_id, event.update_id or f"event:{event.event_id}"


def _update(event: EventRow) -> tuple[str, str]:
    """An update: the device and the version its event is about (see the docstring)."""
    version = attempted_version(event.type, event.version, event.from_version)
    return (event.device_id, f"version:{version}") if version else _attempt(event)


# -- rates ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rates:
    """Updates finished, and how they ended (see the module docstring)."""

    updates: int
    succeeded: int
    failed: int
    rolled_back: int

    def _share(self, count: int) -> float | None:
        return count / self.updates if self.updates else None

    @property
    def success_rate(self) -> float | None:
        return self._share(self.succeeded)

    @property
    def failure_rate(self) -> float | None:
        return self._share(self.failed)

    @property
    def rollback_rate(self) -> float | None:
        return self._share(self.rolled_back)


def update_rates(events: Iterable[EventRow]) -> Rates:
    """Count updates, successes, failures and rollbacks, each update once (per device
    and version, however many events it sent)."""
    succeeded: set[tuple[str, str]] = set()
    failed: set[tuple[str, str]] = set()
    rolled_back: set[tuple[str, str]] = set()
    for event in events:
        if event.type in SUCCESS_TYPES:
            succeeded.add(_update(event))
        elif event.type in FAILURE_TYPES:
            failed.add(_update(event))
        elif event.type in ROLLBACK_TYPES:
            rolled_back.add(_update(event))
    failed -= succeeded
    return Rates(len(succeeded) + len(failed), len(succeeded), len(failed), len(rolled_back))


@dataclass(frozen=True, slots=True)
class HourRates:
    start: datetime
    rates: Rates


def hourly_rates(events: Iterable[EventRow], *, end: datetime, hours: int) -> list[HourRates]:
    """:func:`update_rates` per hour, for the ``hours`` hours up to and including the
    one holding ``end`` (oldest first); events outside them are left out. An attempt
    whose events straddle an hour boundary counts in each hour it has events in."""
    last = end.replace(minute=0, second=0, microsecond=0)
    first = last - timedelta(hours=hours - 1)
    buckets: dict[datetime, list[EventRow]] = {
        first + timedelta(hours=i): [] for i in range(hours)}
    for event in events:
        hour = event.received_at.replace(minute=0, second=0, microsecond=0)
        if hour in buckets:
            buckets[hour].append(event)
    return [HourRates(start, update_rates(rows)) for start, rows in buckets.items()]


# -- time to update ---------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Percentiles:
    count: int
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None


def percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(len(values), percentile(values, 50), percentile(values, 90),
                       percentile(values, 95), percentile(values, 99),
                       max(values) if values else None)


def install_seconds(events: Iterable[EventRow]) -> list[float]:
    """Per device and attempt: seconds from the first ``download-started`` to the
    first ``committed`` (device clock). Attempts are matched by ``update_id``, or by
    version when the device sends none; attempts missing either end are left out."""
    starts: dict[tuple[str, str], datetime] = {}
    ends: dict[tuple[str, str], datetime] = {}
    for event in events:
        key = (event.device_id, event.update_id or f"version:{event.version}")
        if event.type == "download-started":
            starts[key] = min(event.at, starts.get(key, event.at))
        elif event.type == "committed":
            ends[key] = min(event.at, ends.get(key, event.at))
    return [(ends[key] - start).total_seconds() for key, start in starts.items()
            if key in ends and ends[key] >= start]


def rollout_seconds(events: Iterable[EventRow], started: Mapping[int, datetime]
                    ) -> list[float]:
    """Per device and rollout: seconds from the rollout's start to the device's first
    ``committed`` report of it (server clock)."""
    first: dict[tuple[str, int], datetime] = {}
    for event in events:
        rollout = event.rollout_id
        if event.type != "committed" or rollout is None or rollout not in started:
            continue
        key = (event.device_id, rollout)
        first[key] = min(event.received_at, first.get(key, event.received_at))
    return [max(0.0, (at - started[rollout]).total_seconds())
            for (_, rollout), at in first.items()]


# -- versions ---------------------------------------------------------------------------


def _parsed(version: str | None) -> Version | None:
    if version is None:
        return None
    try:
        return Version(version)
    except InvalidVersion:
        return None


def _older(version: str | None, target: str) -> bool:
    if version is None:
        return True
    mine, theirs = _parsed(version), _parsed(target)
    if mine is None or theirs is None:
        return version != target
    return mine < theirs


@dataclass(frozen=True, slots=True)
class VersionCount:
    app: str
    version: str | None
    devices: int
    share: float  # of the app's devices


def version_distribution(rows: Iterable[tuple[str, str | None, int]]) -> list[VersionCount]:
    """From (app, version, devices) counts: per app, newest version first, no version
    last, with each version's share of the app's devices."""
    ordered = list(rows)
    totals: dict[str, int] = {}
    for app, _, count in ordered:
        totals[app] = totals.get(app, 0) + count

    # Stable sorts, least significant key first: text, then newest version first, then
    # per app with the parseable versions before the others and "no version" last.
    ordered.sort(key=lambda r: r[1] or "")
    ordered.sort(key=lambda r: _parsed(r[1]) or _ZERO, reverse=True)
    ordered.sort(key=lambda r: (r[0], r[1] is None, _parsed(r[1]) is None))
    return [VersionCount(app, version, count, count / totals[app] if totals[app] else 0.0)
            for app, version, count in ordered]


_ZERO = Version("0")


# -- stuck devices ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    app: str
    channel: str
    platform: str
    version: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChannelTarget:
    """The version every device of an app's channel should run: its newest completed
    rollout's (``since``: when that rollout completed)."""

    rollout_id: int
    app: str
    channel: str
    version: str
    since: datetime
    group: Mapping[str, str] = field(default_factory=dict)
    platforms: frozenset[str] = frozenset()


def channel_targets(completed: Iterable[ChannelTarget]) -> dict[tuple[str, str], ChannelTarget]:
    """The newest (highest id) completed rollout per (app, channel), as the check-in
    decisions use it."""
    targets: dict[tuple[str, str], ChannelTarget] = {}
    for target in completed:
        key = (target.app, target.channel)
        if key not in targets or targets[key].rollout_id < target.rollout_id:
            targets[key] = target
    return targets


@dataclass(frozen=True, slots=True)
class StuckDevice:
    device_id: str
    app: str
    channel: str
    version: str | None
    target_version: str
    rollout_id: int
    stuck_hours: float
    last_seen: datetime | None


def stuck_devices(devices: Iterable[DeviceRow],
                  targets: Mapping[tuple[str, str], ChannelTarget], *, now: datetime,
                  hours: float) -> list[StuckDevice]:
    """Devices behind their channel's target for more than ``hours`` hours."""
    stuck: list[StuckDevice] = []
    for device in devices:
        target = targets.get((device.app, device.channel))
        if (target is None or not matches_group(device.tags, target.group)
                or device.platform not in target.platforms
                or not _older(device.version, target.version)):
            continue
        behind = (now - target.since).total_seconds() / 3600
        if behind > hours:
            stuck.append(StuckDevice(device.id, device.app, device.channel, device.version,
                                     target.version, target.rollout_id, behind,
                                     device.last_seen))
    return sorted(stuck, key=lambda s: (s.app, s.channel, s.device_id))


# -- failure reasons --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReasonCount:
    reason: str
    count: int
    devices: int
    types: tuple[str, ...]


def normalize_reason(reason: str) -> str:
    return " ".join(reason.split())[:300] or NO_REASON


def top_failure_reasons(events: Iterable[EventRow], limit: int = 10) -> list[ReasonCount]:
    """The most frequent reasons of failure events: most events first, then by text."""
    counts: dict[str, int] = {}
    devices: dict[str, set[str]] = {}
    types: dict[str, set[str]] = {}
    for event in events:
        if event.type not in FAILURE_TYPES:
            continue
        reason = normalize_reason(event.reason)
        counts[reason] = counts.get(reason, 0) + 1
        devices.setdefault(reason, set()).add(event.device_id)
        types.setdefault(reason, set()).add(event.type)
    ranked = sorted(counts, key=lambda r: (-counts[r], r))[:limit]
    return [ReasonCount(r, counts[r], len(devices[r]), tuple(sorted(types[r]))) for r in ranked]


# -- a rollout's stages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageRow:
    """One stage of a rollout: the devices whose cohort falls in its band, and how
    those that reported fared."""

    index: int
    percent: float
    state: str  # done, current, paused, pending, aborted, not reached
    devices: int
    succeeded: int
    failed: int


def rollout_stage_rows(plan: RolloutPlan, scope: Iterable[float],
                       results: Mapping[str, Outcome], offered_at: Mapping[str, int]
                       ) -> list[StageRow]:
    """Per stage: devices in its cohort band (``scope``: cohorts of the devices the
    rollout can reach, as for :func:`~fleetup.server._rollouts.stage_stats`), and the
    successes and failures of the devices the stage offered the release to."""
    bands = list(zip((0.0, *plan.stages[:-1]), plan.stages, strict=True))
    devices = [0] * len(bands)
    succeeded = [0] * len(bands)
    failed = [0] * len(bands)

    def band(cohort: float) -> int | None:
        for index, (low, high) in enumerate(bands):
            if low <= cohort < high:
                return index
        return None

    for cohort in scope:
        if (i := band(cohort)) is not None:
            devices[i] += 1
    for device_id, outcome in results.items():
        if (i := offered_at.get(device_id)) is not None and 0 <= i < len(bands):
            if outcome == Outcome.FAILED:
                failed[i] += 1
            else:
                succeeded[i] += 1
    return [StageRow(i, high, _stage_state(plan, i), devices[i], succeeded[i], failed[i])
            for i, (_, high) in enumerate(bands)]


def _stage_state(plan: RolloutPlan, index: int) -> str:
    if plan.state == RolloutState.COMPLETED or index < plan.stage_index:
        return "done"
    if index > plan.stage_index:
        return "not reached" if plan.state == RolloutState.ABORTED else "pending"
    return {RolloutState.ACTIVE: "current", RolloutState.PAUSED: "paused",
            RolloutState.ABORTED: "aborted"}[plan.state]


# -- queries ----------------------------------------------------------------------------


def recent_events(session: Session, *, since: datetime, types: Iterable[str],
                  app: str | None = None, rollout_id: int | None = None,
                  limit: int | None = None) -> list[EventRow]:
    """Events of ``types`` received after ``since``, oldest first, with their app."""
    query = (select(Event.device_id, Event.event_id, Event.type, Event.at, Event.received_at,
                    Device.app, Event.version, Event.from_version, Event.update_id,
                    Event.rollout_id, Event.reason)
             .join(Device, Device.id == Event.device_id)
             .where(Event.type.in_(sorted(types)), Event.received_at > since)
             .order_by(Event.received_at, Event.device_id, Event.event_id))
    if app:
        query = query.where(Device.app == app)
    if rollout_id is not None:
        query = query.where(Event.rollout_id == rollout_id)
    if limit is not None:
        query = query.limit(limit)
    return [EventRow(*row) for row in session.execute(query)]


def version_counts(session: Session, *, app: str | None = None
                   ) -> list[tuple[str, str | None, int]]:
    """(app, version, devices) of the registered devices."""
    query = select(Device.app, Device.version, func.count()).group_by(Device.app,
                                                                       Device.version)
    if app:
        query = query.where(Device.app == app)
    return [(row[0], row[1], int(row[2])) for row in session.execute(query)]


def rollout_starts(session: Session, *, ids: Iterable[int]) -> dict[int, datetime]:
    """When each of these rollouts was created."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.execute(select(Rollout.id, Rollout.created_at).where(Rollout.id.in_(wanted)))
    return {row[0]: row[1] for row in rows}


def stuck_inputs(session: Session, *, app: str | None = None
                 ) -> tuple[dict[tuple[str, str], ChannelTarget], list[DeviceRow]]:
    """The channels' targets, and the devices not on exactly their target's version
    (the only ones that can be behind it; the rest of the fleet is not read)."""
    query = select(Rollout).where(Rollout.state == RolloutState.COMPLETED.value)
    if app:
        query = query.where(Rollout.app == app)
    targets = channel_targets(
        ChannelTarget(r.id, r.app, r.channel, r.version, r.updated_at, dict(r.group_filter or {}))
        for r in session.scalars(query))
    devices: list[DeviceRow] = []
    for key, target in list(targets.items()):
        platforms = frozenset(session.scalars(select(Release.platform).where(
            Release.app == target.app, Release.version == target.version,
            Release.yanked.is_(False))))
        targets[key] = ChannelTarget(target.rollout_id, target.app, target.channel,
                                     target.version, target.since, target.group, platforms)
        rows = session.execute(
            select(Device.id, Device.app, Device.channel, Device.platform, Device.version,
                   Device.tags, Device.last_seen)
            .where(Device.app == target.app, Device.channel == target.channel,
                   or_(Device.version.is_(None), Device.version != target.version)))
        devices += [DeviceRow(r[0], r[1], r[2], r[3], r[4], dict(r[5] or {}), r[6])
                    for r in rows]
    return targets, devices


# -- reports: a query and a computation, for the routes, the dashboard and the alerts ---


def rates_report(session: Session, *, now: datetime, hours: int, app: str | None = None
                 ) -> tuple[Rates, list[HourRates]]:
    """Rates over the last ``hours`` hours, in total and per hour."""
    events = recent_events(session, since=now - timedelta(hours=hours), types=RATE_TYPES,
                           app=app)
    return update_rates(events), hourly_rates(events, end=now, hours=hours)


def time_to_update_report(session: Session, *, now: datetime, hours: int,
                          app: str | None = None, rollout_id: int | None = None
                          ) -> tuple[Percentiles, Percentiles]:
    """Percentiles of install and rollout seconds of the updates committed lately."""
    events = recent_events(session, since=now - timedelta(hours=hours),
                           types={"download-started", "committed"}, app=app,
                           rollout_id=rollout_id)
    started = rollout_starts(session, ids=(e.rollout_id for e in events
                                           if e.rollout_id is not None))
    return percentiles(install_seconds(events)), percentiles(rollout_seconds(events, started))


def stuck_report(session: Session, *, now: datetime, hours: float, app: str | None = None
                 ) -> list[StuckDevice]:
    targets, devices = stuck_inputs(session, app=app)
    return stuck_devices(devices, targets, now=now, hours=hours)


def failure_reasons_report(session: Session, *, now: datetime, hours: int,
                           app: str | None = None, rollout_id: int | None = None,
                           limit: int = 10) -> list[ReasonCount]:
    events = recent_events(session, since=now - timedelta(hours=hours), types=FAILURE_TYPES,
                           app=app, rollout_id=rollout_id)
    return top_failure_reasons(events, limit)
