"""Alerts: rules that watch the fleet, and webhooks that hear about it exactly once.

Why this module exists: an operator must learn that a rollout goes bad, that devices
are stuck, that something rolled back, or that a device saw a bad signature or hash,
without watching the dashboard — and must learn it once, not once per server process,
per evaluation round or per retry. The pieces:

- **Rules** (pure): :func:`evaluate_rule` turns a rule and a snapshot of the fleet
  (:class:`FleetFacts`) into :class:`Firing` values, each with a stable ``key`` naming
  the condition (``rollout:7`` for a failure rate, ``integrity:<device>:<version>`` ...).
  Kinds, what ``threshold`` and ``min_count`` mean for each, and what the key names
  (so what each alerts once per):

  * ``failure_rate`` — a rollout (active or paused) whose failed devices are more than
    ``threshold`` (a share, 0-1) of at least ``min_count`` reporting devices, counted
    as the rollout's own health gate counts them. Once per rollout.
  * ``stuck_devices`` — at least ``min_count`` devices behind their channel's target
    more than ``threshold`` hours (see ``_analytics``). Once per app, channel and
    target version.
  * ``rollback`` — a rollout aborted with rollback, or devices reporting
    ``rolled-back`` / ``rollback``. Once per rollout (or per app and version left).
  * ``integrity_failure`` — a device reporting ``verify-failed``: a signature, hash or
    length check refused what it downloaded. Once per device and version.
  * ``running_yanked`` — a device reporting ``running-yanked``: its release was yanked
    and no release its policy allows can replace it. Once per device and version.

  Event-driven kinds look at events received since the rule was created (the rule
  keeps a cursor, re-read with a minute of overlap so a late commit is not missed).

- **Recording**: one process at a time evaluates (a database lease, like the rollout
  evaluator). Each firing becomes an ``alerts`` row — unique on (rule, key), inserted
  with ON CONFLICT DO NOTHING — and, in the same transaction, an ``alert_deliveries``
  row for the rule's webhook: the **outbox**. An alert therefore exists once, and its
  delivery is recorded durably with it, before anything is sent.

- **Delivery**: every server process polls the outbox and *claims* due rows with
  ``UPDATE ... SET claimed_by = me, claimed_until = now + timeout WHERE id = :id AND
  state = 'pending' AND (claimed_until IS NULL OR claimed_until < now)``; only the
  process whose update changed the row sends it. A JSON POST carries the headers
  ``Idempotency-Key`` (the same on every retry of one delivery), ``X-Fleetup-Alert``
  and, with a secret, ``X-Fleetup-Signature: sha256=<HMAC of the body>``. A 2xx marks
  the row delivered; anything else (refused connection, timeout, 5xx, 4xx) schedules a
  retry after an exponential backoff with jitter (:func:`backoff_seconds`), until
  ``webhook_max_attempts``, after which it is ``failed`` (visible in the API and the
  dashboard). Pending rows survive restarts: they are in the database.

  E-mail notifications (``_notify``) are rows of the same outbox with transport
  ``email``: claimed, retried and given up on by this same loop, sent over SMTP.

  So each alert is sent to its webhook once, across receiver downtime, restarts and
  several processes — with one exception no sender can close: a process that dies
  after the receiver answered 2xx but before it recorded so sends again once its claim
  expires. The ``Idempotency-Key`` lets a receiver drop that duplicate.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleetup._protocol import INTEGRITY_EVENTS, ROLLBACK_EVENTS, YANKED_EVENTS
from fleetup._version import __version__
from fleetup.errors import ServerAPIError
from fleetup.server import _crud, _notify
from fleetup.server._analytics import (
    ChannelTarget,
    DeviceRow,
    EventRow,
    recent_events,
    stuck_devices,
    stuck_inputs,
)
from fleetup.server._background import cancel_all, every, when_woken
from fleetup.server._models import Alert, AlertDelivery, AlertRule, Rollout, utcnow
from fleetup.server._rollouts import Outcome, RolloutState, outcomes
from fleetup.server._schemas import AlertRuleCreate, AlertRuleUpdate

if TYPE_CHECKING:
    from fleetup.server._fleet import Fleet

__all__ = [
    "SEVERITY",
    "AlertService",
    "Claimed",
    "DeliveryState",
    "Firing",
    "FleetFacts",
    "RolloutHealth",
    "Rule",
    "RuleKind",
    "Sent",
    "acknowledge_alert",
    "backoff_seconds",
    "claim_due",
    "create_rule",
    "delete_rule",
    "deliveries_of",
    "encode_body",
    "evaluate_rule",
    "evaluate_rules",
    "finish_delivery",
    "gather_facts",
    "list_alerts",
    "list_rules",
    "record_firings",
    "rule_of",
    "sign_body",
    "update_rule",
    "webhook_payload",
]

log = logging.getLogger("fleetup.server")

_EVALUATOR_LEASE = "alert-evaluator"
# Event-driven rules re-read this much before their cursor: an event stored by a
# transaction that committed after the last scan began is still seen.
_EVENT_OVERLAP = timedelta(seconds=60)
_CLAIM_BATCH = 20
_SAMPLE = 20  # device ids listed in an alert's details


class RuleKind(enum.StrEnum):
    FAILURE_RATE = "failure_rate"
    STUCK_DEVICES = "stuck_devices"
    ROLLBACK = "rollback"
    INTEGRITY_FAILURE = "integrity_failure"
    RUNNING_YANKED = "running_yanked"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"        # gave up after webhook_max_attempts
    CANCELLED = "cancelled"  # its rule was deleted before it went out


SEVERITY = {RuleKind.FAILURE_RATE: "critical", RuleKind.INTEGRITY_FAILURE: "critical",
            RuleKind.ROLLBACK: "warning", RuleKind.STUCK_DEVICES: "warning",
            RuleKind.RUNNING_YANKED: "warning"}
EVENT_KINDS = frozenset({RuleKind.ROLLBACK, RuleKind.INTEGRITY_FAILURE,
                         RuleKind.RUNNING_YANKED})


# -- pure: rules ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule as the evaluation sees it. ``events_since``: event-driven kinds only
    consider events received (and rollouts aborted) after this instant."""

    id: int
    name: str
    kind: RuleKind
    threshold: float
    min_count: int
    events_since: datetime
    app: str | None = None


@dataclass(frozen=True, slots=True)
class RolloutHealth:
    """A rollout's outcome counts (per device, as its health gate counts them)."""

    rollout_id: int
    app: str
    version: str
    channel: str
    state: RolloutState
    reports: int
    failures: int
    rollback: bool = False
    changed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FleetFacts:
    """What the rules look at, read once per evaluation round."""

    now: datetime
    rollouts: Sequence[RolloutHealth] = ()
    events: Sequence[EventRow] = ()
    targets: Mapping[tuple[str, str], ChannelTarget] = field(default_factory=dict)
    devices: Sequence[DeviceRow] = ()


@dataclass(frozen=True, slots=True)
class Firing:
    """A condition a rule found; ``key`` is what makes it alert once."""

    rule_id: int
    key: str
    kind: RuleKind
    severity: str
    title: str
    app: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def evaluate_rules(rules: Iterable[Rule], facts: FleetFacts) -> list[Firing]:
    """Every firing of every rule, one per (rule, key)."""
    return [firing for rule in rules for firing in evaluate_rule(rule, facts)]


def evaluate_rule(rule: Rule, facts: FleetFacts) -> list[Firing]:
    """What ``rule`` finds in ``facts``: at most one firing per key, in a stable order."""
    found = _EVALUATORS[rule.kind](rule, facts)
    unique: dict[str, Firing] = {}
    for firing in found:
        unique.setdefault(firing.key, firing)
    return list(unique.values())


def _mine(rule: Rule, app: str | None) -> bool:
    return rule.app is None or rule.app == app


def _failure_rate(rule: Rule, facts: FleetFacts) -> list[Firing]:
    fired = []
    for r in facts.rollouts:
        if (r.state not in (RolloutState.ACTIVE, RolloutState.PAUSED) or not _mine(rule, r.app)
                or r.reports < max(rule.min_count, 1)):
            continue
        rate = r.failures / r.reports
        if rate > rule.threshold:
            fired.append(Firing(
                rule.id, f"rollout:{r.rollout_id}", rule.kind, SEVERITY[rule.kind],
                f"{r.app} {r.version}: failure rate {rate:.1%} in rollout {r.rollout_id} "
                f"({r.failures} of {r.reports} devices), over {rule.threshold:.1%}", r.app,
                {"rollout_id": r.rollout_id, "version": r.version, "channel": r.channel,
                 "reports": r.reports, "failures": r.failures, "failure_rate": rate,
                 "threshold": rule.threshold, "rollout_state": r.state.value}))
    return fired


def _stuck(rule: Rule, facts: FleetFacts) -> list[Firing]:
    devices = [d for d in facts.devices if _mine(rule, d.app)]
    groups: dict[tuple[str, str, str], list[str]] = {}
    rollout_of: dict[tuple[str, str, str], int] = {}
    for s in stuck_devices(devices, facts.targets, now=facts.now, hours=rule.threshold):
        key = (s.app, s.channel, s.target_version)
        groups.setdefault(key, []).append(s.device_id)
        rollout_of[key] = s.rollout_id
    fired = []
    for (app, channel, version), ids in sorted(groups.items()):
        if len(ids) < max(rule.min_count, 1):
            continue
        fired.append(Firing(
            rule.id, f"stuck:{app}:{channel}:{version}", rule.kind, SEVERITY[rule.kind],
            f"{len(ids)} {app} device{'s' if len(ids) != 1 else ''} on {channel} still "
            f"behind {version} more than {rule.threshold:g} h after rollout "
            f"{rollout_of[(app, channel, version)]} completed", app,
            {"channel": channel, "target_version": version, "devices": len(ids),
             "rollout_id": rollout_of[(app, channel, version)], "hours": rule.threshold,
             "sample": ids[:_SAMPLE]}))
    return fired


def _rollback(rule: Rule, facts: FleetFacts) -> list[Firing]:
    fired = []
    for r in facts.rollouts:
        if (r.state == RolloutState.ABORTED and r.rollback and _mine(rule, r.app)
                and r.changed_at is not None and r.changed_at > rule.events_since):
            fired.append(Firing(
                rule.id, f"rollout:{r.rollout_id}:rollback", rule.kind, SEVERITY[rule.kind],
                f"rollout {r.rollout_id} of {r.app} {r.version} was aborted with rollback",
                r.app, {"rollout_id": r.rollout_id, "version": r.version,
                        "channel": r.channel, "cause": "operator"}))
    groups: dict[str, list[EventRow]] = {}
    for e in _new_events(rule, facts, ROLLBACK_EVENTS):
        key = (f"rollout:{e.rollout_id}:rollback" if e.rollout_id is not None
               else f"version:{e.app}:{e.from_version}:rollback")
        groups.setdefault(key, []).append(e)
    for key, events in groups.items():
        first = events[0]
        devices = sorted({e.device_id for e in events})
        where = (f"rollout {first.rollout_id}" if first.rollout_id is not None
                 else f"version {first.from_version}")
        fired.append(Firing(
            rule.id, key, rule.kind, SEVERITY[rule.kind],
            f"{first.app}: {len(devices)} device{'s' if len(devices) != 1 else ''} rolled "
            f"back from {first.from_version} ({where})", first.app,
            {"rollout_id": first.rollout_id, "from_version": first.from_version,
             "to_version": first.version, "devices": len(devices), "sample": devices[:_SAMPLE],
             "reason": first.reason, "cause": "device"}))
    return fired


def _integrity(rule: Rule, facts: FleetFacts) -> list[Firing]:
    return [Firing(
        rule.id, f"integrity:{e.device_id}:{e.version}", rule.kind, SEVERITY[rule.kind],
        f"{e.app}: device {e.device_id} refused {e.version}: {e.reason or 'verification failed'}",
        e.app, {"device_id": e.device_id, "version": e.version, "event_id": e.event_id,
                "rollout_id": e.rollout_id, "reason": e.reason, "at": e.at.isoformat()})
        for e in _new_events(rule, facts, INTEGRITY_EVENTS)]


def _running_yanked(rule: Rule, facts: FleetFacts) -> list[Firing]:
    return [Firing(
        rule.id, f"yanked:{e.device_id}:{e.version}", rule.kind, SEVERITY[rule.kind],
        f"{e.app}: device {e.device_id} runs the yanked {e.version} and has nowhere to go",
        e.app, {"device_id": e.device_id, "version": e.version, "event_id": e.event_id,
                "reason": e.reason, "at": e.at.isoformat()})
        for e in _new_events(rule, facts, YANKED_EVENTS)]


def _new_events(rule: Rule, facts: FleetFacts, types: frozenset[str]) -> list[EventRow]:
    return [e for e in facts.events if e.type in types and e.received_at > rule.events_since
            and _mine(rule, e.app)]


_EVALUATORS: dict[RuleKind, Callable[[Rule, FleetFacts], list[Firing]]] = {
    RuleKind.FAILURE_RATE: _failure_rate, RuleKind.STUCK_DEVICES: _stuck,
    RuleKind.ROLLBACK: _rollback, RuleKind.INTEGRITY_FAILURE: _integrity,
    RuleKind.RUNNING_YANKED: _running_yanked}


# -- pure: delivery ---------------------------------------------------------------------


def backoff_seconds(attempts: int, *, base: float, cap: float, rand: float) -> float:
    """Delay before retry number ``attempts`` (1 = the first retry): exponential,
    capped, with "equal jitter" — between half and all of ``min(cap, base * 2**(n-1))``
    (``rand`` in [0, 1)), so retries of many alerts spread out but never come early."""
    ceiling = min(cap, base * float(1 << min(max(0, attempts - 1), 60)))
    return ceiling / 2 + ceiling / 2 * rand


def webhook_payload(alert: Alert, idempotency_key: str) -> dict[str, Any]:
    """The JSON body a webhook receives (stored in the outbox, identical on retries)."""
    return {"id": alert.id, "idempotency_key": idempotency_key, "kind": alert.kind,
            "severity": alert.severity, "title": alert.title, "app": alert.app,
            "key": alert.key, "rule": {"id": alert.rule_id, "name": alert.rule_name},
            "details": dict(alert.details), "created_at": alert.created_at.isoformat(),
            "sender": f"fleetup/{__version__}"}


def encode_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign_body(secret: str, body: bytes) -> str:
    """``X-Fleetup-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- database: evaluation and the outbox ------------------------------------------------


def rule_of(row: AlertRule) -> Rule:
    since = max(row.created_at, row.events_seen_until - _EVENT_OVERLAP)
    return Rule(row.id, row.name, RuleKind(row.kind), row.threshold, row.min_count, since,
                row.app)


def gather_facts(session: Session, rules: Sequence[Rule], now: datetime) -> FleetFacts:
    """Read what ``rules`` need, and nothing else (a stuck rule reads devices; the
    others read rollouts and recent events)."""
    kinds = {r.kind for r in rules}
    health: list[RolloutHealth] = []
    if kinds & {RuleKind.FAILURE_RATE, RuleKind.ROLLBACK}:
        for row in session.scalars(select(Rollout).where(Rollout.state.in_(
                ["active", "paused", "aborted"]))):
            if row.state == "aborted" and not row.rollback:
                continue
            results = (outcomes(_crud.rollout_outcome_events(session, rollout_id=row.id))
                       if row.state != "aborted" else {})
            health.append(RolloutHealth(
                row.id, row.app, row.version, row.channel, RolloutState(row.state),
                len(results), sum(o == Outcome.FAILED for o in results.values()),
                row.rollback, row.updated_at))
    events: list[EventRow] = []
    event_rules = [r for r in rules if r.kind in EVENT_KINDS]
    if event_rules:
        events = recent_events(session, since=min(r.events_since for r in event_rules),
                               types=ROLLBACK_EVENTS | INTEGRITY_EVENTS | YANKED_EVENTS)
    targets: dict[tuple[str, str], ChannelTarget] = {}
    devices: list[DeviceRow] = []
    if RuleKind.STUCK_DEVICES in kinds:
        targets, devices = stuck_inputs(session)
    return FleetFacts(now, health, events, targets, devices)


def record_firings(session: Session, *, firings: Sequence[Firing],
                   rules: Mapping[int, AlertRule], now: datetime) -> list[int]:
    """Insert each firing's alert unless its (rule, key) exists, with its outbox row;
    returns the ids of the new alerts. Leaves committing to the caller."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    created = []
    for firing in firings:
        rule = rules[firing.rule_id]
        alert_id = session.scalar(
            module.insert(Alert).values(
                rule_id=rule.id, rule_name=rule.name, kind=firing.kind.value,
                severity=firing.severity, key=firing.key[:300], app=firing.app,
                title=firing.title, details=dict(firing.details), created_at=now)
            .on_conflict_do_nothing().returning(Alert.id))
        if alert_id is None:
            continue
        created.append(alert_id)
        if rule.webhook_url:
            alert = session.get(Alert, alert_id)
            assert alert is not None
            key = uuid.uuid4().hex
            session.add(AlertDelivery(
                alert_id=alert_id, url=rule.webhook_url, secret=rule.webhook_secret,
                idempotency_key=key, payload=webhook_payload(alert, key),
                state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now,
                last_error="", created_at=now))
    session.flush()
    new_alerts = [session.get(Alert, i) for i in created]
    _notify.enqueue(session, [_notify.alert_opened(a) for a in new_alerts if a is not None],
                    now=now)
    return created


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row this process claimed, with what it needs to send it."""

    id: int
    url: str
    secret: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int
    transport: str = "webhook"


@dataclass(frozen=True, slots=True)
class Sent:
    """The result of one delivery attempt."""

    claimed: Claimed
    ok: bool
    status: int | None
    error: str


def claim_due(session: Session, *, holder: str, now: datetime, hold: timedelta,
              limit: int = _CLAIM_BATCH) -> list[Claimed]:
    """Claim up to ``limit`` due outbox rows for ``holder``; commits each claim."""
    unclaimed = (AlertDelivery.claimed_until.is_(None)) | (AlertDelivery.claimed_until < now)
    due_now = (AlertDelivery.state == DeliveryState.PENDING.value,
               AlertDelivery.next_attempt_at <= now, unclaimed)
    due = list(session.scalars(
        select(AlertDelivery.id).where(*due_now)
        .order_by(AlertDelivery.next_attempt_at, AlertDelivery.id).limit(limit)))
    session.rollback()
    claimed = []
    for delivery_id in due:
        # Only one process's UPDATE matches: the others find the row claimed.
        taken = session.execute(
            update(AlertDelivery).where(AlertDelivery.id == delivery_id, *due_now)
            .values(claimed_by=holder, claimed_until=now + hold))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            continue
        session.commit()
        row = session.get(AlertDelivery, delivery_id)
        assert row is not None
        claimed.append(Claimed(row.id, row.url, row.secret, row.idempotency_key,
                               dict(row.payload), row.attempts, row.transport))
    return claimed


def finish_delivery(session: Session, *, sent: Sent, holder: str, now: datetime,
                    retry_at: datetime | None) -> bool:
    """Record an attempt (``retry_at`` ``None`` after a failure: give up); commits.
    Returns ``False`` if the claim had expired and another process holds the row."""
    attempts = sent.claimed.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "last_status": sent.status,
                              "last_error": sent.error[:2000], "claimed_by": None,
                              "claimed_until": None}
    if sent.ok:
        values.update(state=DeliveryState.DELIVERED.value, delivered_at=now)
    elif retry_at is None:
        values.update(state=DeliveryState.FAILED.value)
    else:
        values.update(next_attempt_at=retry_at)
    done = session.execute(update(AlertDelivery)
                           .where(AlertDelivery.id == sent.claimed.id,
                                  AlertDelivery.claimed_by == holder)
                           .values(**values))
    session.commit()
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


# -- database: what operators do --------------------------------------------------------


def list_alerts(session: Session, *, state: str = "all", limit: int = 100, offset: int = 0
                ) -> tuple[list[Alert], int]:
    """Alerts newest first; ``state``: ``open`` (not acknowledged), ``acknowledged``
    or ``all``."""
    query = select(Alert).order_by(Alert.id.desc())
    if state == "open":
        query = query.where(Alert.acknowledged_at.is_(None))
    elif state == "acknowledged":
        query = query.where(Alert.acknowledged_at.is_not(None))
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return list(session.scalars(query.limit(limit).offset(offset))), int(count or 0)


def deliveries_of(session: Session, *, alert_ids: Iterable[int]
                  ) -> dict[int, list[AlertDelivery]]:
    ids = sorted(set(alert_ids))
    found: dict[int, list[AlertDelivery]] = {i: [] for i in ids}
    if ids:
        for row in session.scalars(select(AlertDelivery).where(AlertDelivery.alert_id.in_(ids))
                                   .order_by(AlertDelivery.id)):
            found[row.alert_id or 0].append(row)  # never 0: the query asks for these ids
    return found


def acknowledge_alert(session: Session, *, alert_id: int, actor: str) -> Alert:
    """Mark an alert seen (once; acknowledging again changes nothing); commits.

    Raises:
        ServerAPIError: 404 no such alert.
    """
    row = _crud.get_or_404(session, Alert, alert_id, what="alert")
    if row.acknowledged_at is None:
        row.acknowledged_at, row.acknowledged_by = utcnow(), actor
        _crud.add_audit(session, actor=actor, action="alert.ack", target=f"alert:{alert_id}")
        session.commit()
    return row


def list_rules(session: Session) -> list[AlertRule]:
    return list(session.scalars(select(AlertRule).order_by(AlertRule.id)))


def _check_threshold(kind: str, threshold: float) -> None:
    if kind == RuleKind.FAILURE_RATE and not 0 <= threshold <= 1:
        raise ServerAPIError("a failure_rate threshold is a share between 0 and 1",
                             "invalid_request", 422)


def _audited(row: AlertRule) -> dict[str, Any]:
    return {"name": row.name, "kind": row.kind, "threshold": row.threshold,
            "min_count": row.min_count, "app": row.app, "webhook_url": row.webhook_url,
            "enabled": row.enabled}  # never the secret


def create_rule(session: Session, *, spec: AlertRuleCreate, actor: str) -> AlertRule:
    """Add a rule (audited); commits.

    Raises:
        ServerAPIError: 422 a threshold out of range for its kind.
    """
    _check_threshold(spec.kind, spec.threshold)
    now = utcnow()
    row = AlertRule(name=spec.name, kind=spec.kind, threshold=spec.threshold,
                    min_count=spec.min_count, app=spec.app, webhook_url=spec.webhook_url,
                    webhook_secret=spec.webhook_secret, enabled=spec.enabled,
                    events_seen_until=now, created_at=now, created_by=actor, updated_at=now)
    session.add(row)
    session.flush()
    _crud.add_audit(session, actor=actor, action="alert_rule.create",
                    target=f"alert_rule:{row.id}", details=_audited(row))
    session.commit()
    return row


def update_rule(session: Session, *, rule_id: int, spec: AlertRuleUpdate, actor: str
                ) -> AlertRule:
    """Change the fields given (audited); commits.

    Raises:
        ServerAPIError: 404 no such rule; 422 a threshold out of range for its kind.
    """
    row = _crud.get_or_404(session, AlertRule, rule_id, what="alert rule")
    changes = spec.model_dump(exclude_unset=True)
    _check_threshold(row.kind, changes.get("threshold", row.threshold))
    if changes.get("enabled") and not row.enabled:
        # Re-enabled: events from while it was off are not news any more.
        row.events_seen_until = utcnow() + _EVENT_OVERLAP
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    _crud.add_audit(session, actor=actor, action="alert_rule.update",
                    target=f"alert_rule:{rule_id}", details=_audited(row))
    session.commit()
    return row


def delete_rule(session: Session, *, rule_id: int, actor: str) -> AlertRule:
    """Delete a rule; its alerts stay, their undelivered webhooks are cancelled; commits.

    Raises:
        ServerAPIError: 404 no such rule.
    """
    row = _crud.get_or_404(session, AlertRule, rule_id, what="alert rule")
    alert_ids = select(Alert.id).where(Alert.rule_id == rule_id).scalar_subquery()
    session.execute(update(AlertDelivery)
                    .where(AlertDelivery.alert_id.in_(alert_ids),
                           AlertDelivery.state == DeliveryState.PENDING.value)
                    .values(state=DeliveryState.CANCELLED.value))
    session.delete(row)
    _crud.add_audit(session, actor=actor, action="alert_rule.delete",
                    target=f"alert_rule:{rule_id}", details=_audited(row))
    session.commit()
    return row


# -- the background service -------------------------------------------------------------


class AlertService:
    """Evaluates the rules and drains the outbox, in every server process.

    Evaluation runs under a database lease (one process at a time); delivery runs
    everywhere and is kept single per row by the claim. ``transport`` and ``rand`` are
    seams for tests (defaults: a real httpx transport, :func:`random.random`).
    """

    def __init__(self, fleet: Fleet, transport: httpx.AsyncBaseTransport | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.fleet = fleet
        self.settings = fleet.settings
        self._transport = transport
        self._rand = rand
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            transport=self._transport, timeout=self.settings.webhook_timeout_seconds,
            follow_redirects=False, headers={"User-Agent": f"fleetup/{__version__}"})
        self._tasks = [
            asyncio.create_task(every(self.settings.alert_tick_seconds, self._evaluate_round,
                                      "alert evaluation")),
            asyncio.create_task(when_woken(self._wake, self.settings.webhook_poll_seconds,
                                           self.deliver_due, "webhook delivery"))]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self._client is not None:
            await self._client.aclose()

    async def _evaluate_round(self) -> None:
        if await asyncio.to_thread(self.evaluate):
            self._wake.set()  # new alerts: deliver them now, not at the next poll

    def evaluate(self) -> int:
        """One evaluation round, if this process holds the lease; returns how many new
        alerts it recorded."""
        fleet, now = self.fleet, self.fleet.clock()
        ttl = timedelta(seconds=max(1.0, 3 * self.settings.alert_tick_seconds))
        with fleet.sessions() as session:
            if not _crud.acquire_lease(session, name=_EVALUATOR_LEASE, holder=fleet.holder,
                                       ttl=ttl):
                return 0
            rows = {r.id: r for r in session.scalars(
                select(AlertRule).where(AlertRule.enabled.is_(True)))}
            if not rows:
                return 0
            rules = [rule_of(r) for r in rows.values()]
            firings = evaluate_rules(rules, gather_facts(session, rules, now))
            created = record_firings(session, firings=firings, rules=rows, now=now)
            for row in rows.values():
                if RuleKind(row.kind) in EVENT_KINDS:
                    row.events_seen_until = now
            session.commit()
        if created:
            log.info("raised %d alert(s)", len(created))
        return len(created)

    async def deliver_due(self) -> int:
        """Claim the due outbox rows, send them, record the results; returns how many
        attempts were made."""
        # Long enough to send and record; a process killed meanwhile holds its rows no
        # longer than this before another one retries them.
        hold = timedelta(seconds=2 * max(self.settings.webhook_timeout_seconds,
                                         self.settings.smtp_timeout_seconds) + 1)
        claimed = await asyncio.to_thread(self._claim, hold)
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._send(c) for c in claimed))
        await asyncio.to_thread(self._record, results)
        return len(results)

    def _claim(self, hold: timedelta) -> list[Claimed]:
        with self.fleet.sessions() as session:
            return claim_due(session, holder=self.fleet.holder, now=self.fleet.clock(),
                             hold=hold)

    async def _send(self, claimed: Claimed) -> Sent:
        if claimed.transport == _notify.EMAIL:
            mailed = await asyncio.to_thread(_notify.send_email, self.settings, claimed.payload,
                                             idempotency_key=claimed.idempotency_key)
            return Sent(claimed, mailed.ok, mailed.status, mailed.error)
        assert self._client is not None
        body = encode_body(claimed.payload)
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": claimed.idempotency_key,
                   "X-Fleetup-Alert": str(claimed.payload.get("id", ""))}
        if claimed.secret:
            headers["X-Fleetup-Signature"] = sign_body(claimed.secret, body)
        try:
            response = await self._client.post(claimed.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return Sent(claimed, False, None, f"{type(e).__name__}: {e}")
        if 200 <= response.status_code < 300:
            return Sent(claimed, True, response.status_code, "")
        return Sent(claimed, False, response.status_code,
                    f"HTTP {response.status_code}: {response.text[:200]}")

    def _record(self, results: Sequence[Sent]) -> None:
        s = self.settings
        with self.fleet.sessions() as session:
            for sent in results:
                now = self.fleet.clock()
                attempts = sent.claimed.attempts + 1
                retry_at = None
                if not sent.ok and attempts < s.webhook_max_attempts:
                    retry_at = now + timedelta(seconds=backoff_seconds(
                        attempts, base=s.webhook_backoff_seconds,
                        cap=s.webhook_backoff_max_seconds, rand=self._rand()))
                if not sent.ok:
                    log.warning("%s delivery %d (attempt %d) failed: %s",
                                sent.claimed.transport, sent.claimed.id, attempts, sent.error)
                finish_delivery(session, sent=sent, holder=self.fleet.holder, now=now,
                                retry_at=retry_at)
