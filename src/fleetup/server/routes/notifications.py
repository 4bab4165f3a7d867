"""E-mail notifications (admin: subscriptions hold people's addresses): who is mailed
about which events, and the e-mail outbox. Why a resource of its own rather than an
``email`` target on alert rules: three of the four events (a rollout paused or completed,
a release pushed) are not alerts, and one subscription covers several events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetup.server import _subscriptions
from fleetup.server._models import AlertDelivery, NotificationSubscription
from fleetup.server._schemas import (
    AlertDeliveryPublic,
    NotificationCreate,
    NotificationDeliveriesPublic,
    NotificationDeliveryPublic,
    NotificationPublic,
    NotificationsPublic,
)
from fleetup.server.deps import AdminDep, SessionDep
from fleetup.server.routes._params import Offset, RowId

router = APIRouter(prefix="/notifications", tags=["notifications"])


def _public(row: NotificationSubscription) -> NotificationPublic:
    return NotificationPublic.model_validate(row)


def _delivery(row: AlertDelivery) -> NotificationDeliveryPublic:
    payload = row.payload
    return NotificationDeliveryPublic(
        **AlertDeliveryPublic.model_validate(row).model_dump(), alert_id=row.alert_id,
        to=[str(r) for r in payload.get("to", [])], subject=str(payload.get("subject", "")))


@router.get("", response_model=NotificationsPublic)
def list_notifications(session: SessionDep, _: AdminDep) -> NotificationsPublic:
    rows = _subscriptions.list_subscriptions(session)
    return NotificationsPublic(data=[_public(r) for r in rows], count=len(rows))


@router.post("", response_model=NotificationPublic, status_code=201)
def create_notification(body: NotificationCreate, session: SessionDep, operator: AdminDep
                        ) -> NotificationPublic:
    """Mail these recipients about these events from now on."""
    return _public(_subscriptions.create_subscription(session, spec=body,
                                                      actor=operator.actor))


@router.get("/deliveries", response_model=NotificationDeliveriesPublic)
def list_deliveries(session: SessionDep, _: AdminDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Offset = 0) -> NotificationDeliveriesPublic:
    """E-mails newest first: pending (with attempts and the last error), delivered,
    failed (gave up) or cancelled."""
    rows, count = _subscriptions.email_deliveries(session, limit=limit, offset=offset)
    return NotificationDeliveriesPublic(data=[_delivery(r) for r in rows], count=count)


@router.delete("/{subscription_id}", response_model=NotificationPublic)
def delete_notification(subscription_id: RowId, session: SessionDep, operator: AdminDep
                        ) -> NotificationPublic:
    """Its mails not yet sent are cancelled."""
    return _public(_subscriptions.delete_subscription(
        session, subscription_id=subscription_id, actor=operator.actor))
