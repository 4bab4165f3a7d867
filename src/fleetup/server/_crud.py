"""Keyword-only query functions: every read and write the routes and background tasks do.

Each function takes a ``Session`` and leaves committing to its caller, except where
its docstring says otherwise (the rollout state changes, which must commit together
with their audit entry). SQLAlchemy errors are not caught here: the app's error
handlers turn them into JSON errors, and the integrity ones into 409s. A missing row
asked for by id is a 404 (:func:`get_or_404`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Select, Table, and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleetup._protocol import OUTCOME_EVENTS, EventType
from fleetup.errors import ServerAPIError
from fleetup.server import _notify
from fleetup.server._auth import Role, TokenKind, hash_token, new_token, reset_hash, same_hash
from fleetup.server._models import (
    AuditEntry,
    Channel,
    Device,
    EnrollmentToken,
    Event,
    Lease,
    OperatorToken,
    Release,
    RevokedToken,
    Rollout,
    RolloutOffer,
    utcnow,
)
from fleetup.server._rollouts import (
    Offer,
    RolloutPlan,
    RolloutState,
)
from fleetup.server._store import StoredRelease

__all__ = [
    "acquire_lease",
    "add_audit",
    "audit_actions",
    "create_channel",
    "create_enrollment_token",
    "create_operator_token",
    "create_rollout",
    "device_events",
    "device_tokens",
    "devices_that_failed",
    "enroll_device",
    "find_device_by_token",
    "find_operator",
    "flush_checkins",
    "get_or_404",
    "insert_events",
    "list_audit",
    "list_channels",
    "list_devices",
    "list_enrollment_tokens",
    "list_groups",
    "list_operator_tokens",
    "list_releases",
    "list_rollouts",
    "load_offers",
    "next_rollout_id",
    "plan_of",
    "record_offers",
    "record_releases",
    "release_lease",
    "release_platforms",
    "revoke_operator_token",
    "revoked_since",
    "rollout_devices",
    "rollout_offered_stages",
    "rollout_outcome_events",
    "rollout_scope",
    "search_devices",
    "update_rollout",
]

T = TypeVar("T")


def get_or_404(session: Session, model: type[T], key: object, *, what: str) -> T:
    """The ``model`` row whose primary key is ``key``.

    Raises:
        ServerAPIError: 404 ``not_found`` ("no such <what>").
    """
    row = session.get(model, key)
    if row is None:
        raise ServerAPIError(f"no such {what}", "not_found", 404)
    return row


# -- audit ----------------------------------------------------------------------------


def add_audit(session: Session, *, actor: str, action: str, target: str = "",
              details: Mapping[str, Any] | None = None, at: datetime | None = None) -> None:
    session.add(AuditEntry(actor=actor, action=action, target=target,
                           details=dict(details or {}), at=at or utcnow()))


def list_audit(session: Session, *, limit: int, offset: int, actor: str | None = None,
               action: str | None = None, since: datetime | None = None,
               until: datetime | None = None) -> tuple[list[AuditEntry], int]:
    """Newest first; ``actor`` matches a part of it, ``action`` exactly or, ending in
    ``.``, as a prefix; ``since`` included, ``until`` excluded."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc())
    if actor:
        query = query.where(AuditEntry.actor.contains(actor, autoescape=True))
    if action:
        query = query.where(AuditEntry.action.startswith(action, autoescape=True)
                            if action.endswith(".") else AuditEntry.action == action)
    if since:
        query = query.where(AuditEntry.at >= since)
    if until:
        query = query.where(AuditEntry.at < until)
    return _page(session, query, limit=limit, offset=offset)


def audit_actions(session: Session) -> list[str]:
    """The actions recorded so far (for a filter's choices)."""
    return list(session.scalars(select(AuditEntry.action).distinct()
                                .order_by(AuditEntry.action).limit(200)))


def _page(session: Session, query: Select[Any], *, limit: int, offset: int
          ) -> tuple[list[Any], int]:
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = list(session.scalars(query.limit(limit).offset(offset)))
    return rows, int(count or 0)


# -- tokens ---------------------------------------------------------------------------


def create_operator_token(session: Session, *, role: Role, name: str, created_by: str
                          ) -> tuple[OperatorToken, str]:
    """A new operator token; returns the row and the token (shown once, never stored)."""
    token = new_token(TokenKind.OPERATOR)
    row = OperatorToken(name=name or f"{role}-token", role=role.value,
                        token_hash=hash_token(token), created_by=created_by)
    session.add(row)
    session.flush()
    return row, token


def find_operator(session: Session, *, token_hash: str) -> OperatorToken | None:
    return session.scalar(select(OperatorToken).where(OperatorToken.token_hash == token_hash,
                                                      OperatorToken.revoked_at.is_(None)))


def list_operator_tokens(session: Session) -> list[OperatorToken]:
    return list(session.scalars(select(OperatorToken).order_by(OperatorToken.id)))


def revoke_operator_token(session: Session, *, token_id: int) -> OperatorToken | None:
    row = session.get(OperatorToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def create_enrollment_token(session: Session, *, name: str, created_by: str,
                            max_uses: int | None = None, expires_at: datetime | None = None
                            ) -> tuple[EnrollmentToken, str]:
    token = new_token(TokenKind.ENROLLMENT)
    row = EnrollmentToken(name=name or "enrollment", token_hash=hash_token(token),
                          created_by=created_by, max_uses=max_uses, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def list_enrollment_tokens(session: Session) -> list[EnrollmentToken]:
    return list(session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id)))


# -- devices --------------------------------------------------------------------------


def enroll_device(session: Session, *, enrollment_token: str, device_id: str, app: str,
                  platform: str, channel: str, tags: Mapping[str, str],
                  current_token: str | None = None) -> tuple[Device, str] | None:
    """Trade a valid enrollment token for a device token (``None`` if it is not valid).

    An id already enrolled is enrolled again (its token replaced) only by the holder of
    its current token, or once an operator reset it (:func:`reset_device`): the
    fleet-wide enrollment token alone must not take a device over.

    Raises:
        ServerAPIError: 409 ``device_enrolled``: the id is enrolled and neither holds.
    """
    now = utcnow()
    used = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.token_hash == hash_token(enrollment_token),
               EnrollmentToken.revoked_at.is_(None),
               or_(EnrollmentToken.expires_at.is_(None), EnrollmentToken.expires_at > now),
               or_(EnrollmentToken.max_uses.is_(None),
                   EnrollmentToken.uses < EnrollmentToken.max_uses))
        .values(uses=EnrollmentToken.uses + 1))
    if used.rowcount != 1:  # type: ignore[attr-defined]
        return None
    token = new_token(TokenKind.DEVICE)
    device = session.get(Device, device_id)
    if device is None:
        device = Device(id=device_id, app=app, platform=platform, channel=channel,
                        tags=dict(tags), token_hash=hash_token(token), enrolled_at=now)
        session.add(device)
    else:
        _check_may_enroll_again(device, current_token)
        if device.token_hash != reset_hash(device.id):
            session.add(RevokedToken(token_hash=device.token_hash, revoked_at=now))
        device.app, device.platform, device.channel = app, platform, channel
        device.tags, device.token_hash, device.enrolled_at = dict(tags), hash_token(token), now
        device.removed_at = None  # a removed device enrolled again (with a valid token)
    session.flush()
    return device, token


def _check_may_enroll_again(device: Device, current_token: str | None) -> None:
    if device.token_hash == reset_hash(device.id):
        return
    if current_token and same_hash(hash_token(current_token), device.token_hash):
        return
    raise ServerAPIError(
        f"device {device.id!r} is already enrolled: enroll it again with its current "
        f"device token, or have an admin reset it (POST /api/v1/devices/{device.id}/reset)",
        "device_enrolled", 409)


def reset_device(session: Session, *, device_id: str) -> Device:
    """Revoke a device's token and let the next enrollment of its id claim it (a device
    that lost its token, or was replaced).

    Raises:
        ServerAPIError: 404 ``not_found``.
    """
    device = get_or_404(session, Device, device_id, what="device")
    if device.token_hash != reset_hash(device.id):
        session.add(RevokedToken(token_hash=device.token_hash, revoked_at=utcnow()))
        device.token_hash = reset_hash(device.id)
    session.flush()
    return device


def find_device_by_token(session: Session, *, token_hash: str) -> Device | None:
    return session.scalar(select(Device).where(Device.token_hash == token_hash))


def revoked_since(session: Session, *, since: datetime) -> list[str]:
    """Hashes of device tokens replaced (by a re-enrollment) after ``since``."""
    return list(session.scalars(select(RevokedToken.token_hash)
                                .where(RevokedToken.revoked_at > since)))


def device_tokens(session: Session, *, limit: int) -> list[Device]:
    """Up to ``limit`` devices, most recently seen first: what a server process preloads
    into its token cache."""
    query = select(Device).order_by(Device.last_seen.desc().nulls_last()).limit(limit)
    return list(session.scalars(query))


def list_devices(session: Session, *, app: str | None = None, channel: str | None = None,
                 version: str | None = None, tags: Mapping[str, str] | None = None,
                 limit: int = 100, offset: int = 0) -> tuple[list[Device], int]:
    query = select(Device).order_by(Device.id)
    if app:
        query = query.where(Device.app == app)
    if channel:
        query = query.where(Device.channel == channel)
    if version:
        query = query.where(Device.version == version)
    if tags:
        # JSON containment differs by database; tag filters are applied in Python.
        rows = [d for d in session.scalars(query)
                if all(d.tags.get(k) == v for k, v in tags.items())]
        return rows[offset:offset + limit], len(rows)
    return _page(session, query, limit=limit, offset=offset)


def list_groups(session: Session, *, app: str | None = None) -> list[tuple[str, str, int]]:
    """Device groups by tag: (tag, value, device count)."""
    query = select(Device.tags)
    if app:
        query = query.where(Device.app == app)
    counts: dict[tuple[str, str], int] = {}
    for tags in session.scalars(query):
        for key, value in (tags or {}).items():
            counts[(key, str(value))] = counts.get((key, str(value)), 0) + 1
    return sorted((k, v, n) for (k, v), n in counts.items())


_REPORTED = ("last_seen", "version", "previous_version", "state")
_PROFILE = ("app", "platform", "channel", "tags", "kept")


def flush_checkins(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write buffered check-in results as executemany UPDATEs by primary key.

    Every row updates what changes at each check-in (last seen, version, state); rows
    with ``profile_changed`` also update app, platform, channel and tags — rarely, so
    the common statement stays narrow (no JSON to encode per row).
    """
    if not rows:
        return
    table = cast(Table, Device.__table__)
    for columns, chosen in ((_REPORTED, rows),
                            (_PROFILE, [r for r in rows if r.get("profile_changed")])):
        if chosen:
            statement = (update(table).where(table.c.id == bindparam("device_id"))
                         .values({c: bindparam(c) for c in columns}))
            session.execute(statement, [{"device_id": r["id"], **{c: r.get(c) for c in columns}}
                                        for r in chosen])
    done = [{"device_id": r["id"], "done": r["version"]} for r in rows
            if r.get("profile_changed") and r.get("rollback_to", "") is None]
    if done:  # one-device rollback orders the device has carried out
        session.execute(update(table).where(table.c.id == bindparam("device_id"),
                                            table.c.rollback_to == bindparam("done"))
                        .values(rollback_to=None), done)


def record_offers(session: Session, *, offers: Sequence[Mapping[str, Any]]) -> None:
    """Remember that rollouts offered their release to devices (``rollout_id``,
    ``device_id``, ``stage_index``, ``from_version``, ``offered_at``); the first offer of
    a rollout to a device is kept, a repeated one changes nothing."""
    if not offers:
        return
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    unique = {(o["rollout_id"], o["device_id"]): dict(o) for o in offers}
    # A rollout or device deleted meanwhile has nothing left to offer.
    known = set(session.scalars(select(Rollout.id).where(
        Rollout.id.in_({k[0] for k in unique}))))
    devices = set(session.scalars(select(Device.id).where(
        Device.id.in_({k[1] for k in unique}))))
    rows = [o for (r, d), o in unique.items() if r in known and d in devices]
    if rows:
        session.execute(module.insert(RolloutOffer).values(rows).on_conflict_do_nothing())


def device_events(session: Session, *, device_id: str, limit: int, offset: int
                  ) -> tuple[list[Event], int]:
    query = (select(Event).where(Event.device_id == device_id)
             .order_by(Event.received_at.desc(), Event.at.desc()))
    return _page(session, query, limit=limit, offset=offset)


def insert_events(session: Session, *, device_id: str, events: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[str], list[str]]:
    """Store events once each: ``INSERT ... ON CONFLICT DO NOTHING RETURNING``.

    Returns (accepted ids, duplicate ids), both in request order.
    """
    if not events:
        return [], []
    unique = {str(e["event_id"]): {**e, "device_id": device_id} for e in events}
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = (module.insert(Event).values(list(unique.values())).on_conflict_do_nothing()
                 .returning(Event.event_id))
    inserted = set(session.scalars(statement))
    accepted: list[str] = []
    duplicates: list[str] = []
    for event in events:
        event_id = str(event["event_id"])
        if event_id in inserted and event_id not in accepted:
            accepted.append(event_id)
        else:
            duplicates.append(event_id)
    return accepted, duplicates


# -- channels and releases ------------------------------------------------------------


def list_channels(session: Session) -> list[Channel]:
    return list(session.scalars(select(Channel).order_by(Channel.name)))


def create_channel(session: Session, *, name: str, description: str) -> Channel:
    row = Channel(name=name, description=description)
    session.add(row)
    session.flush()
    return row


def record_releases(session: Session, *, releases: Iterable[StoredRelease],
                    targets_version: int) -> list[Release]:
    """Insert or update the release rows for the targets just published."""
    existing = {r.target_path: r for r in session.scalars(select(Release))}
    rows: list[Release] = []
    for stored in releases:
        facts = stored.facts
        row = existing.get(stored.target_path)
        if row is None:
            row = Release(app=facts.app, version=facts.version, platform=facts.platform,
                          target_path=stored.target_path)
            session.add(row)
        row.length, row.sha256 = stored.length, stored.sha256
        row.channels, row.update_type = list(facts.channels), facts.update_type.value
        row.yanked, row.published = facts.yanked, facts.published
        row.targets_version = targets_version
        rows.append(row)
    session.flush()
    return rows


def list_releases(session: Session, *, app: str | None = None, version: str | None = None
                  ) -> list[Release]:
    query = select(Release).order_by(Release.app, Release.platform, Release.id)
    if app:
        query = query.where(Release.app == app)
    if version:
        query = query.where(Release.version == version)
    return list(session.scalars(query))


# -- rollouts -------------------------------------------------------------------------


def create_rollout(session: Session, *, app: str, version: str, channel: str,
                   stages: Sequence[float], soak_seconds: int, min_reports: int,
                   max_failure_rate: float, group: Mapping[str, str], created_by: str,
                   max_failure_increase: float | None = None, confidence: float = 0.95,
                   on_halt: str = "pause") -> Rollout:
    now = utcnow()
    row = Rollout(app=app, version=version, channel=channel, stages=list(stages),
                  soak_seconds=soak_seconds, min_reports=min_reports,
                  max_failure_rate=max_failure_rate, group_filter=dict(group),
                  max_failure_increase=max_failure_increase, confidence=confidence,
                  on_halt=on_halt,
                  created_by=created_by, stage_started_at=now, created_at=now,
                  updated_at=now, state=RolloutState.ACTIVE.value, stage_index=0,
                  state_reason="started", rollback=False, base_reports=0, base_failures=0,
                  revision=1)
    session.add(row)
    session.flush()
    return row


def list_rollouts(session: Session, *, app: str | None = None, state: str | None = None
                  ) -> list[Rollout]:
    query = select(Rollout).order_by(Rollout.id.desc())
    if app:
        query = query.where(Rollout.app == app)
    if state:
        query = query.where(Rollout.state == state)
    return list(session.scalars(query))


def update_rollout(session: Session, *, rollout_id: int, seen_revision: int,
                   from_states: Iterable[RolloutState], actor: str, action: str,
                   details: Mapping[str, Any] | None = None, **values: Any) -> bool:
    """Change a rollout if nobody changed it since ``seen_revision``, and audit it.

    Commits on success and rolls back otherwise, so with several server processes a
    change (an automatic stage advance, say) is applied and audited exactly once.
    Returns whether this call made the change.
    """
    now = utcnow()
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, Rollout.revision == seen_revision,
               Rollout.state.in_([s.value for s in from_states]))
        .values(revision=Rollout.revision + 1, updated_at=now, **values))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    add_audit(session, actor=actor, action=action, target=f"rollout:{rollout_id}",
              details={**(details or {}), **{k: _plain(v) for k, v in values.items()}}, at=now)
    if values.get("state") in ("paused", "completed"):
        # The mail is recorded with the change: a pause applied once is mailed once.
        row = session.get(Rollout, rollout_id, populate_existing=True)
        notice = _notify.rollout_changed(row) if row is not None else None
        _notify.enqueue(session, [notice] if notice else [], now=now)
    session.commit()
    return True


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def plan_of(row: Rollout) -> RolloutPlan:
    return RolloutPlan(
        id=row.id, app=row.app, version=row.version, channel=row.channel,
        stages=tuple(float(s) for s in row.stages), stage_index=row.stage_index,
        stage_started_at=row.stage_started_at, soak=timedelta(seconds=row.soak_seconds),
        min_reports=row.min_reports, max_failure_rate=row.max_failure_rate,
        state=RolloutState(row.state), group=dict(row.group_filter or {}),
        rollback=row.rollback, base_reports=row.base_reports,
        base_failures=row.base_failures, max_failure_increase=row.max_failure_increase,
        confidence=row.confidence, on_halt_rollback=row.on_halt == "rollback",
        created_at=row.created_at)


def health_reports(session: Session, *, plan: RolloutPlan, limit: int = 200_000
                   ) -> list[tuple[str, str | None, bool]]:
    """(device id, version it ran, ok) of the ``health-report`` events of the rollout's
    app and channel since it started, oldest first: the control gate's evidence (the
    treated and the control group over the same window). ``limit`` bounds the read to
    the newest reports (each device's latest is what counts)."""
    where = [Event.type == EventType.HEALTH_REPORT.value, Device.app == plan.app,
             Device.channel == plan.channel]
    if plan.created_at is not None:
        where.append(Event.received_at >= plan.created_at)
    rows = list(session.execute(
        select(Event.device_id, Event.version, Event.details)
        .join(Device, Device.id == Event.device_id).where(*where)
        .order_by(Event.received_at.desc()).limit(limit)))  # the newest, if over limit
    return [(r[0], r[1], (r[2] or {}).get("ok") is True) for r in reversed(rows)]


def rollout_outcome_events(session: Session, *, rollout_id: int) -> list[tuple[str, str]]:
    """(device id, event type) of the reports that count towards a rollout's health:
    only those of devices the rollout offered its release to (a device of another app,
    or outside the stage, cannot vote)."""
    rows = session.execute(
        select(Event.device_id, Event.type)
        .join(RolloutOffer, and_(RolloutOffer.rollout_id == Event.rollout_id,
                                 RolloutOffer.device_id == Event.device_id))
        .where(Event.rollout_id == rollout_id, Event.type.in_(sorted(OUTCOME_EVENTS)))
        .order_by(Event.received_at))
    return [(r[0], r[1]) for r in rows]


def rollout_offered_stages(session: Session, *, rollout_id: int) -> dict[str, int]:
    """Per device the rollout offered its release to, the stage index it was offered at."""
    return {r[0]: r[1] for r in session.execute(
        select(RolloutOffer.device_id, RolloutOffer.stage_index)
        .where(RolloutOffer.rollout_id == rollout_id))}


def rollout_scope(session: Session, *, plan: RolloutPlan, platforms: Iterable[str]
                  ) -> list[str]:
    """Cohort keys (the id where a device has none) of the registered devices a rollout
    can reach: its app, channel, group and platforms. Few columns are read: this runs
    on every rollout evaluation."""
    key = func.coalesce(Device.cohort_key, Device.id)
    where = (Device.app == plan.app, Device.channel == plan.channel,
             Device.platform.in_(list(platforms)))
    if not plan.group:  # no tags to decode: the common case, and much cheaper
        return list(session.scalars(select(key).where(*where)))
    return [row[0] for row in session.execute(select(key, Device.tags).where(*where))
            if all((row[1] or {}).get(k) == v for k, v in plan.group.items())]


def rollout_devices(session: Session, *, plan: RolloutPlan) -> list[Device]:
    """Every device of the rollout's app (for the per-device explanation)."""
    return list(session.scalars(select(Device).where(Device.app == plan.app)
                                .order_by(Device.id)))


def load_offers(session: Session) -> dict[str, list[Offer]]:
    """Every rollout that can still decide something, per app, with what surrounds it.

    Aborted rollouts without rollback decide nothing and are left out; of the completed
    ones only the newest per app and channel matters.
    """
    rows = list(session.scalars(select(Rollout).where(
        or_(Rollout.state.in_([RolloutState.ACTIVE, RolloutState.PAUSED,
                               RolloutState.COMPLETED]),
            and_(Rollout.state == RolloutState.ABORTED, Rollout.rollback.is_(True))))
        .order_by(Rollout.id.desc())))
    newest_completed: set[tuple[str, str]] = set()
    keep: list[Rollout] = []
    for row in rows:
        if row.state == RolloutState.COMPLETED:
            if (row.app, row.channel) in newest_completed:
                continue
            newest_completed.add((row.app, row.channel))
        keep.append(row)
    offers: dict[str, list[Offer]] = {}
    for row in keep:
        offers.setdefault(row.app, []).append(_offer(session, row))
    return offers


def release_platforms(session: Session, *, app: str, version: str) -> list[str]:
    """Platforms on which a release exists and is not yanked."""
    return list(session.scalars(select(Release.platform).where(
        Release.app == app, Release.version == version, Release.yanked.is_(False))))


def _offer(session: Session, row: Rollout) -> Offer:
    platforms = frozenset(release_platforms(session, app=row.app, version=row.version))
    failed = frozenset(session.scalars(
        select(Event.device_id).join(Device, Device.id == Event.device_id)
        .where(Event.type == "health-failed", Event.version == row.version,
               Device.app == row.app).distinct()))
    rollback_to: dict[str, str] = {}
    if row.state == RolloutState.ABORTED:
        for device_id, previous in session.execute(
                select(RolloutOffer.device_id, RolloutOffer.from_version)
                .where(RolloutOffer.rollout_id == row.id)):
            rollback_to[device_id] = previous or ""
    return Offer(plan_of(row), platforms, failed, rollback_to)


# -- leases ---------------------------------------------------------------------------


def acquire_lease(session: Session, *, name: str, holder: str, ttl: timedelta) -> bool:
    """Take (or renew) the named lease unless another holder's is still running; commits."""
    now = utcnow()
    taken = session.execute(
        update(Lease).where(Lease.name == name,
                            or_(Lease.holder == holder, Lease.expires_at < now))
        .values(holder=holder, expires_at=now + ttl))
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        session.commit()
        return True
    if session.get(Lease, name) is not None:
        session.rollback()
        return False
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    inserted = session.execute(module.insert(Lease).values(
        name=name, holder=holder, expires_at=now + ttl).on_conflict_do_nothing())
    session.commit()
    return bool(inserted.rowcount == 1)  # type: ignore[attr-defined]


def release_lease(session: Session, *, name: str, holder: str) -> None:
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
    session.commit()



# -- dry runs -------------------------------------------------------------------------


def next_rollout_id(session: Session) -> int:
    """The id the next rollout will get, barring a concurrent start: cohorts are salted
    with it, so a dry run computes them for this id. PostgreSQL hands out ids from a
    sequence (failed inserts skip values), SQLite takes the largest id plus one."""
    if session.get_bind().dialect.name == "postgresql":
        sequence = session.scalar(select(func.pg_get_serial_sequence("rollouts", "id")))
        if sequence:
            last, called = session.execute(
                select(text("last_value"), text("is_called")).select_from(
                    text(sequence))).one()
            return int(last) + 1 if called else int(last)
    return int(session.scalar(select(func.max(Rollout.id))) or 0) + 1


def devices_that_failed(session: Session, *, app: str, version: str) -> frozenset[str]:
    """Devices of ``app`` that reported a health failure of ``version`` (never offered
    it again)."""
    return frozenset(session.scalars(
        select(Event.device_id).join(Device, Device.id == Event.device_id)
        .where(Event.type == "health-failed", Event.version == version, Device.app == app)
        .distinct()))


def search_devices(session: Session, *, search: str | None = None, app: str | None = None,
                   channel: str | None = None, version: str | None = None,
                   state: str | None = None, tags: Mapping[str, str] | None = None,
                   seen_within: timedelta | None = None, unseen_for: timedelta | None = None,
                   limit: int = 100, offset: int = 0) -> tuple[list[Device], int]:
    """The inventory as the dashboard filters it: :func:`list_devices` plus a device id
    substring, the state, and last seen within (or not for) a while."""
    query = select(Device).order_by(Device.id)
    if search:
        query = query.where(Device.id.contains(search, autoescape=True))
    for column, value in ((Device.app, app), (Device.channel, channel),
                          (Device.version, version), (Device.state, state)):
        if value:
            query = query.where(column == value)
    now = utcnow()
    if seen_within is not None:
        query = query.where(Device.last_seen >= now - seen_within)
    if unseen_for is not None:
        query = query.where(or_(Device.last_seen.is_(None), Device.last_seen < now - unseen_for))
    if tags:
        rows = [d for d in session.scalars(query)
                if all((d.tags or {}).get(k) == v for k, v in tags.items())]
        return rows[offset:offset + limit], len(rows)
    return _page(session, query, limit=limit, offset=offset)
