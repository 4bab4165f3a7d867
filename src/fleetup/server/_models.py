"""The database tables (SQLAlchemy 2 declarative); the schema's history is in ``migrations/``.

Times are stored as UTC and always come back timezone-aware (SQLite forgets the zone,
:class:`UTCDateTime` puts it back). Lists and tag maps are JSON columns. Rows are the
persistence model only: the API speaks the pydantic schemas of ``_schemas.py``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Alert",
    "AlertDelivery",
    "AlertRule",
    "AuditEntry",
    "Base",
    "Channel",
    "DashboardSession",
    "Device",
    "EnrollmentToken",
    "Event",
    "FeatureFlag",
    "Lease",
    "NotificationSubscription",
    "OperatorToken",
    "Release",
    "RevokedToken",
    "Rollout",
    "RolloutOffer",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_cohort_key() -> str:
    return secrets.token_hex(16)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class OperatorToken(Base):
    """An operator's API token (admin, publisher or viewer); only its hash is kept."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class EnrollmentToken(Base):
    """A token a device trades for its own device token; optionally limited in uses/time."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    max_uses: Mapped[int | None] = mapped_column(Integer, default=None)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Channel(Base):
    """A release channel; stable, beta and canary exist from the first migration."""

    __tablename__ = "channels"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Device(Base):
    """An enrolled device: what it last reported, and its token's hash."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    app: Mapped[str] = mapped_column(String(100), index=True)
    platform: Mapped[str] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(100))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[str | None] = mapped_column(String(100), default=None)
    # The version installed before ``version``: where an operator rollback sends it.
    previous_version: Mapped[str | None] = mapped_column(String(100), default=None)
    state: Mapped[str] = mapped_column(String(40), default="idle")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(default=None)
    # Operator actions on one device (``fleetup device move|check|remove``): a channel
    # that overrides the configured one (``channel``, which the device reports); a
    # check-in asked for (answered "check again soon" until the device has checked in
    # after it); removal (token revoked, the row and its history kept).
    channel_override: Mapped[str | None] = mapped_column(String(100), default=None)
    check_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    removed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Made by the server at the first enrolment and kept: cohorts hash this, not the
    # id the device chose (a chosen id could pick its own cohort).
    cohort_key: Mapped[str | None] = mapped_column(String(64), default=new_cohort_key)
    # ``fleetup device rollback|pin``: the releases the device last reported it keeps
    # (a rollback may only go to one of them); a one-device rollback order, ended when
    # the device runs that version; a pin (left out of rollouts, told to run it).
    kept: Mapped[list[Any] | None] = mapped_column(default=None)
    rollback_to: Mapped[str | None] = mapped_column(String(100), default=None)
    pinned_version: Mapped[str | None] = mapped_column(String(100), default=None)
    # The version a one-device rollback left: no rollout offers it to the device again
    # (until an operator pins or unpins it), so the rollback holds.
    rolled_back_from: Mapped[str | None] = mapped_column(String(100), default=None)


class RevokedToken(Base):
    """A device token replaced by a re-enrollment: caches drop it when they see it."""

    __tablename__ = "revoked_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Event(Base):
    """One lifecycle event reported by a device; ``event_id`` is made on the device.

    The key is (device, event id), so a retried report is stored once and one device
    cannot shadow another's events by reusing their ids.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_device_received", "device_id", "received_at"),
        Index("ix_events_rollout_type", "rollout_id", "type"),
        Index("ix_events_type_received", "type", "received_at"),
    )

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[str | None] = mapped_column(String(100), default=None)
    from_version: Mapped[str | None] = mapped_column(String(100), default=None)
    update_id: Mapped[str | None] = mapped_column(String(100), default=None)
    rollout_id: Mapped[int | None] = mapped_column(Integer, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Release(Base):
    """A release pushed to the server's store (facts copied from its signed target)."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app", "version", "platform"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    platform: Mapped[str] = mapped_column(String(100))
    target_path: Mapped[str] = mapped_column(String(400), unique=True)
    length: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    channels: Mapped[list[Any]] = mapped_column(default=list)
    update_type: Mapped[str] = mapped_column(String(20))
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    published: Mapped[str] = mapped_column(String(40), default="")
    targets_version: Mapped[int] = mapped_column(Integer)
    pushed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rollout(Base):
    """A staged rollout of one release version on one app's channel.

    ``revision`` grows with every change: updates are ``... WHERE revision = :seen``, so
    with several server processes a stage advances (and is audited) exactly once.
    """

    __tablename__ = "rollouts"
    __table_args__ = (
        # One unfinished rollout per app and channel.
        Index("uq_rollouts_open", "app", "channel", unique=True,
              sqlite_where=text("state IN ('active', 'paused')"),
              postgresql_where=text("state IN ('active', 'paused')")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(100))
    group_filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stages: Mapped[list[Any]] = mapped_column()
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    soak_seconds: Mapped[int] = mapped_column(Integer)
    min_reports: Mapped[int] = mapped_column(Integer)
    max_failure_rate: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(20), default="active")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    # Reports and failures already counted when an operator resumed: the failure rate
    # that can pause the rollout again is measured on what came after.
    base_reports: Mapped[int] = mapped_column(Integer, default=0)
    base_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The control-group gate (``_gate``; off when None) and what a halt does.
    max_failure_increase: Mapped[float | None] = mapped_column(Float, default=None)
    confidence: Mapped[float] = mapped_column(Float, default=0.95)
    on_halt: Mapped[str] = mapped_column(String(20), default="pause")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    revision: Mapped[int] = mapped_column(Integer, default=1)


class RolloutOffer(Base):
    """A rollout told this device to install its release (at ``stage_index``, while it
    ran ``from_version``). Only offered devices count towards the rollout's health, and
    only they are sent back by an abort with rollback."""

    __tablename__ = "rollout_offers"

    rollout_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True,
        index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    from_version: Mapped[str | None] = mapped_column(String(100), default=None)
    offered_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureFlag(Base):
    """One value of an app's feature flag for one scope: ``default`` (key ``""``),
    ``channel`` (a channel name), ``group`` (``tag=value``) or ``device`` (an id).
    Configuration for the app, never a say in what is installed."""

    __tablename__ = "feature_flags"
    __table_args__ = (UniqueConstraint("app", "name", "scope", "scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(20))
    scope_key: Mapped[str] = mapped_column(String(200), default="")
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"value": scalar}
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200), default="")


class AuditEntry(Base):
    """Who changed what, when. ``actor`` is ``token:<id>:<name>`` or ``system``."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(200), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Lease(Base):
    """A named, expiring lock shared by every server process on one database."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime]


class AlertRule(Base):
    """When to raise an alert, and where to send it (``_alerts`` says what each kind means).

    ``events_seen_until``: event-driven kinds have looked at events received up to here.
    """

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    threshold: Mapped[float] = mapped_column(Float, default=0.0)
    min_count: Mapped[int] = mapped_column(Integer, default=1)
    app: Mapped[str | None] = mapped_column(String(100), default=None)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    webhook_secret: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    events_seen_until: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """One alert a rule raised; (rule, key) is unique, so a condition alerts once."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("rule_id", "key", name="uq_alerts_rule_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(Integer)
    rule_name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(20))
    key: Mapped[str] = mapped_column(String(300))
    app: Mapped[str | None] = mapped_column(String(100), default=None)
    title: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200), default=None)


class AlertDelivery(Base):
    """The outbox: one row per alert and webhook, written with the alert, sent by
    whichever server process claims it first (``claimed_by`` until ``claimed_until``)."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # ``None`` for a notification not about an alert (a rollout paused, a release pushed).
    alert_id: Mapped[int | None] = mapped_column(Integer, index=True, default=None)
    # ``webhook`` (a POST to ``url``) or ``email`` (``payload`` holds recipients, subject
    # and text; ``url`` is ``mailto:`` and the recipients, for people reading the row).
    transport: Mapped[str] = mapped_column(String(20), default="webhook")
    event: Mapped[str] = mapped_column(String(40), default="alert.opened")
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200), default="")
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(100), default=None)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class NotificationSubscription(Base):
    """Who gets e-mail (``recipients``) about which events (``events``, names from
    ``_notify.NotifyEvent``), optionally for one app only."""

    __tablename__ = "notification_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    recipients: Mapped[list[Any]] = mapped_column()
    events: Mapped[list[Any]] = mapped_column()
    app: Mapped[str | None] = mapped_column(String(100), default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")


class DashboardSession(Base):
    """A signed-in dashboard browser: the cookie's SHA-256, its operator, its CSRF token."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[int] = mapped_column(Integer)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
