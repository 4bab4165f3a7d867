"""E-mail notifications: which fleet events mail whom, the mail itself, and SMTP.

Why this module exists: an operator wants a mail when a rollout pauses or completes, an
alert opens or a release is pushed — once each, also while the mail server is down. It
adds no sender loop of its own: each notification is a row in the alert outbox
(``alert_deliveries``, transport ``email``), written in the same transaction as the
change it tells of, and ``_alerts.AlertService`` claims, sends, retries with backoff and
finally gives up on it exactly as it does for a webhook (see ``_alerts``). So:

- a change that is rolled back mails nobody, and a committed one is mailed even if the
  process dies right after;
- the row's ``idempotency_key`` is the SHA-256 of (subscription, event key), unique in
  the table and inserted with ON CONFLICT DO NOTHING: an event recorded twice (a retried
  push, a second pass over the same alert) is mailed once per subscription;
- the key is also the mail's ``Message-ID``, so the one duplicate no sender can prevent
  (the process dies after the server accepted the mail, before recording it) can be
  recognised by the reader's mail system.

Event keys: ``rollout:<id>:r<revision>`` (a pause; a rollout paused, resumed and paused
again mails twice), ``rollout:<id>:completed``, ``alert:<id>``, ``release:<app>:<version>``.
This module imports only the tables, so the places that make events (``_crud``,
``_alerts``, ``_operations``) can call it without an import cycle.
"""

from __future__ import annotations

import enum
import hashlib
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleetup.server._models import Alert, AlertDelivery, NotificationSubscription, Rollout
from fleetup.server._settings import Settings

__all__ = [
    "EMAIL",
    "MailResult",
    "Notice",
    "NotifyEvent",
    "alert_opened",
    "build_message",
    "enqueue",
    "release_pushed",
    "rollout_changed",
    "send_email",
]

EMAIL = "email"
_SUBJECT_CHARS = 200
_BODY_CHARS = 20_000


class NotifyEvent(enum.StrEnum):
    """What a subscription can ask to hear about (values are stored and sent as is)."""

    ROLLOUT_PAUSED = "rollout.paused"
    ROLLOUT_COMPLETED = "rollout.completed"
    ALERT_OPENED = "alert.opened"
    RELEASE_PUSHED = "release.pushed"


@dataclass(frozen=True, slots=True)
class Notice:
    """One event to tell subscribers of: its kind, its key (what makes it once), the
    app it concerns, and the mail's subject and text."""

    event: NotifyEvent
    key: str
    app: str | None
    subject: str
    body: str
    alert_id: int | None = None


@dataclass(frozen=True, slots=True)
class MailResult:
    ok: bool
    status: int | None
    error: str


def _one_line(text: str) -> str:
    """Header-safe: device-reported text can reach a subject, never a second header."""
    return " ".join(text.split())[:_SUBJECT_CHARS]


# -- the notices (pure) -----------------------------------------------------------------


def rollout_changed(row: Rollout) -> Notice | None:
    """The notice for a rollout just paused or completed (``None`` for other states)."""
    where = f"{row.app} {row.version} on {row.channel}"
    reason = row.state_reason or "(no reason recorded)"
    if row.state == "paused":
        return Notice(NotifyEvent.ROLLOUT_PAUSED, f"rollout:{row.id}:r{row.revision}",
                      row.app, f"[fleetup] rollout {row.id} paused: {where}",
                      f"Rollout {row.id} of {where} is paused.\nWhy: {reason}\n"
                      f"Stage {row.stage_index + 1} of {len(row.stages)}.\n")
    if row.state == "completed":
        return Notice(NotifyEvent.ROLLOUT_COMPLETED, f"rollout:{row.id}:completed", row.app,
                      f"[fleetup] rollout {row.id} completed: {where}",
                      f"Rollout {row.id} of {where} has completed.\n{reason}\n")
    return None


def alert_opened(alert: Alert) -> Notice:
    return Notice(NotifyEvent.ALERT_OPENED, f"alert:{alert.id}", alert.app,
                  f"[fleetup] {alert.severity} alert: {alert.title}",
                  f"Alert {alert.id} ({alert.kind}, rule {alert.rule_name!r}) opened "
                  f"at {alert.created_at.isoformat()}.\n{alert.title}\n",
                  alert_id=alert.id)


def release_pushed(app: str, version: str, targets_version: int) -> Notice:
    return Notice(NotifyEvent.RELEASE_PUSHED, f"release:{app}:{version}", app,
                  f"[fleetup] release {app} {version} pushed",
                  f"Release {app} {version} was pushed (targets version "
                  f"{targets_version}).\n")


# -- the outbox -------------------------------------------------------------------------


def _wanted(sub: NotificationSubscription, notice: Notice) -> bool:
    return notice.event.value in sub.events and sub.app in (None, notice.app)


def enqueue(session: Session, notices: Sequence[Notice], *, now: datetime) -> int:
    """Write one e-mail outbox row per notice and subscription that wants it (once per
    key: see the module docstring); returns how many rows are new. Leaves committing
    to the caller, so the mail is recorded in the transaction of the change."""
    if not notices:
        return 0
    subs = list(session.scalars(select(NotificationSubscription)
                                .where(NotificationSubscription.enabled.is_(True))))
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    added = 0
    for notice in notices:
        for sub in (s for s in subs if _wanted(s, notice)):
            key = hashlib.sha256(f"{sub.id}:{notice.key}".encode()).hexdigest()
            payload = {"to": list(sub.recipients), "subject": _one_line(notice.subject),
                       "body": notice.body[:_BODY_CHARS], "event": notice.event.value,
                       "subscription": sub.id}
            result = session.execute(module.insert(AlertDelivery).values(
                alert_id=notice.alert_id, transport=EMAIL, event=notice.event.value,
                url=("mailto:" + ",".join(sub.recipients))[:2000], secret="",
                idempotency_key=key, payload=payload, state="pending", attempts=0,
                next_attempt_at=now, last_error="", created_at=now)
                .on_conflict_do_nothing())
            added += result.rowcount  # type: ignore[attr-defined]
    return added


# -- SMTP: the boundary -----------------------------------------------------------------


def build_message(payload: Mapping[str, Any], *, sender: str, message_id: str
                  ) -> EmailMessage:
    """The mail for an outbox row; the same on every retry (``Message-ID`` included)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(str(r) for r in payload.get("to", []))
    message["Subject"] = _one_line(str(payload.get("subject", "")))
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = f"<{message_id}@fleetup>"
    message["X-Fleetup-Event"] = _one_line(str(payload.get("event", "")))
    message.set_content(str(payload.get("body", "")))
    return message


def send_email(settings: Settings, payload: Mapping[str, Any], *, idempotency_key: str
               ) -> MailResult:
    """Hand one mail to the configured SMTP server (blocking: run it in a thread).

    Never raises for what a retry can mend: a refused connection, a timeout, any SMTP
    error become a failed :class:`MailResult`, and the outbox retries. A mail accepted
    for some recipients and refused for others counts as sent (a retry would mail the
    accepted ones twice); the refused ones are named in ``error``.
    """
    if not settings.smtp_host:
        return MailResult(False, None, "no SMTP server configured (FLEETUP_SERVER_SMTP_HOST)")
    message = build_message(payload, sender=settings.smtp_from, message_id=idempotency_key)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                          timeout=settings.smtp_timeout_seconds) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            refused = smtp.send_message(message)
    except smtplib.SMTPResponseException as e:
        detail = e.smtp_error.decode(errors="replace") if isinstance(
            e.smtp_error, bytes) else str(e.smtp_error)
        return MailResult(False, e.smtp_code, f"SMTP {e.smtp_code}: {detail[:200]}")
    except (smtplib.SMTPException, OSError) as e:
        return MailResult(False, None, f"{type(e).__name__}: {e}"[:300])
    return MailResult(True, 250, f"refused: {', '.join(sorted(refused))}" if refused else "")
