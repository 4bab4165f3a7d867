"""What operators do with e-mail subscriptions: list, add, remove (audited), and read
the e-mail part of the outbox. What a subscription causes is in ``_notify``; how its
mails are sent and retried, in ``_alerts``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fleetup.server import _crud, _notify
from fleetup.server._models import AlertDelivery, NotificationSubscription, utcnow
from fleetup.server._schemas import NotificationCreate

__all__ = ["create_subscription", "delete_subscription", "email_deliveries",
           "list_subscriptions"]


def list_subscriptions(session: Session) -> list[NotificationSubscription]:
    return list(session.scalars(select(NotificationSubscription)
                                .order_by(NotificationSubscription.id)))


def _audited(row: NotificationSubscription) -> dict[str, Any]:
    return {"name": row.name, "recipients": list(row.recipients),
            "events": list(row.events), "app": row.app, "enabled": row.enabled}


def create_subscription(session: Session, *, spec: NotificationCreate, actor: str
                        ) -> NotificationSubscription:
    """Add a subscription (audited); commits. It hears of events from now on."""
    row = NotificationSubscription(
        name=spec.name, recipients=sorted(set(spec.recipients)),
        events=sorted(set(spec.events)), app=spec.app, enabled=spec.enabled,
        created_at=utcnow(), created_by=actor)
    session.add(row)
    session.flush()
    _crud.add_audit(session, actor=actor, action="notification.create",
                    target=f"notification:{row.id}", details=_audited(row))
    session.commit()
    return row


def delete_subscription(session: Session, *, subscription_id: int, actor: str
                        ) -> NotificationSubscription:
    """Remove a subscription; its mails not yet sent are cancelled; commits.

    Raises:
        ServerAPIError: 404 no such subscription.
    """
    row = _crud.get_or_404(session, NotificationSubscription, subscription_id,
                           what="notification")
    mine = AlertDelivery.payload["subscription"].as_integer() == subscription_id
    session.execute(update(AlertDelivery)
                    .where(AlertDelivery.transport == _notify.EMAIL,
                           AlertDelivery.state == "pending", mine)
                    .values(state="cancelled"))
    session.delete(row)
    _crud.add_audit(session, actor=actor, action="notification.delete",
                    target=f"notification:{subscription_id}", details=_audited(row))
    session.commit()
    return row


def email_deliveries(session: Session, *, limit: int, offset: int
                     ) -> tuple[list[AlertDelivery], int]:
    """The e-mail outbox rows, newest first."""
    query = (select(AlertDelivery).where(AlertDelivery.transport == _notify.EMAIL)
             .order_by(AlertDelivery.id.desc()))
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return list(session.scalars(query.limit(limit).offset(offset))), int(count or 0)
