"""Alerts: the alerts raised (viewer), acknowledging one (publisher), and the rules that
raise them (admin: rules hold webhook URLs and secrets). How rules fire and how each
alert reaches its webhook once: ``_alerts``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from fleetup.server import _alerts, _crud
from fleetup.server._models import Alert, AlertDelivery, AlertRule
from fleetup.server._schemas import (
    AlertDeliveryPublic,
    AlertPublic,
    AlertRuleCreate,
    AlertRulePublic,
    AlertRulesPublic,
    AlertRuleUpdate,
    AlertsPublic,
)
from fleetup.server.deps import AdminDep, PublisherDep, SessionDep, ViewerDep
from fleetup.server.routes._params import Offset, RowId

router = APIRouter(prefix="/alerts", tags=["alerts"])


def _alert(row: Alert, deliveries: list[AlertDelivery]) -> AlertPublic:
    return AlertPublic.model_validate(row).model_copy(update={
        "deliveries": [AlertDeliveryPublic.model_validate(d) for d in deliveries]})


def _rule(row: AlertRule) -> AlertRulePublic:
    return AlertRulePublic(
        id=row.id, name=row.name, kind=row.kind,  # type: ignore[arg-type]
        threshold=row.threshold, min_count=row.min_count, app=row.app,
        webhook_url=row.webhook_url, enabled=row.enabled, created_at=row.created_at,
        created_by=row.created_by, updated_at=row.updated_at, signed=bool(row.webhook_secret))


@router.get("", response_model=AlertsPublic)
def list_alerts(session: SessionDep, _: ViewerDep,
                state: Literal["open", "acknowledged", "all"] = "all",
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Offset = 0) -> AlertsPublic:
    """Newest first, each with its webhook deliveries (state, attempts, last error)."""
    rows, count = _alerts.list_alerts(session, state=state, limit=limit, offset=offset)
    deliveries = _alerts.deliveries_of(session, alert_ids=[r.id for r in rows])
    return AlertsPublic(data=[_alert(r, deliveries[r.id]) for r in rows], count=count)


@router.get("/rules", response_model=AlertRulesPublic)
def list_rules(session: SessionDep, _: AdminDep) -> AlertRulesPublic:
    rows = _alerts.list_rules(session)
    return AlertRulesPublic(data=[_rule(r) for r in rows], count=len(rows))


@router.post("/rules", response_model=AlertRulePublic, status_code=201)
def create_rule(body: AlertRuleCreate, session: SessionDep, operator: AdminDep
                ) -> AlertRulePublic:
    """A rule; event-driven kinds consider events received from now on."""
    return _rule(_alerts.create_rule(session, spec=body, actor=operator.actor))


@router.get("/rules/{rule_id}", response_model=AlertRulePublic)
def read_rule(rule_id: RowId, session: SessionDep, _: AdminDep) -> AlertRulePublic:
    return _rule(_crud.get_or_404(session, AlertRule, rule_id, what="alert rule"))


@router.patch("/rules/{rule_id}", response_model=AlertRulePublic)
def update_rule(rule_id: RowId, body: AlertRuleUpdate, session: SessionDep,
                operator: AdminDep) -> AlertRulePublic:
    """Change the fields sent; deliveries already queued keep their URL."""
    return _rule(_alerts.update_rule(session, rule_id=rule_id, spec=body,
                                     actor=operator.actor))


@router.delete("/rules/{rule_id}", response_model=AlertRulePublic)
def delete_rule(rule_id: RowId, session: SessionDep, operator: AdminDep) -> AlertRulePublic:
    """Its alerts stay; their webhooks not yet delivered are cancelled."""
    return _rule(_alerts.delete_rule(session, rule_id=rule_id, actor=operator.actor))


@router.get("/{alert_id}", response_model=AlertPublic)
def read_alert(alert_id: RowId, session: SessionDep, _: ViewerDep) -> AlertPublic:
    row = _crud.get_or_404(session, Alert, alert_id, what="alert")
    return _alert(row, _alerts.deliveries_of(session, alert_ids=[alert_id])[alert_id])


@router.post("/{alert_id}/ack", response_model=AlertPublic)
def acknowledge(alert_id: RowId, session: SessionDep, operator: PublisherDep) -> AlertPublic:
    """Mark the alert seen (it leaves the open alerts; acknowledging twice is harmless)."""
    row = _alerts.acknowledge_alert(session, alert_id=alert_id, actor=operator.actor)
    return _alert(row, _alerts.deliveries_of(session, alert_ids=[alert_id])[alert_id])
