"""Devices: the fleet protocol (enroll, check-in, events) and the operators' inventory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from fleetup._protocol import FAILURE_EVENTS, EventType
from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._fleet import DeviceEntry, Fleet
from fleetup.server._models import Device
from fleetup.server._schemas import (
    CheckinRequest,
    CheckinResponse,
    DevicePublic,
    DevicesPublic,
    EnrollRequest,
    EnrollResponse,
    EventPublic,
    EventsPublic,
    EventsRequest,
    EventsResponse,
    GroupPublic,
    GroupsPublic,
)
from fleetup.server.deps import (
    AdminDep,
    DeviceDep,
    FleetDep,
    MetricsDep,
    SessionDep,
    ViewerDep,
    count_auth_failure,
    refuse_if_limited,
)
from fleetup.server.routes._params import Offset

router = APIRouter(prefix="/devices", tags=["devices"])

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("/enroll", response_model=EnrollResponse, status_code=201)
def enroll(body: EnrollRequest, request: Request, session: SessionDep,
           fleet: FleetDep) -> EnrollResponse:
    """Trade an enrollment token for this device's own token (shown once). An id that
    is enrolled already needs its current token (``Authorization: Bearer``) or an
    admin's reset first; otherwise 409 ``device_enrolled``."""
    refuse_if_limited(request)
    if body.channel not in {c.name for c in _crud.list_channels(session)}:
        raise ServerAPIError(f"no channel {body.channel!r}", "unknown_channel", 422)
    scheme, _, current = request.headers.get("authorization", "").partition(" ")
    enrolled = _crud.enroll_device(session, enrollment_token=body.enrollment_token,
                                   device_id=body.device_id, app=body.app,
                                   platform=body.platform, channel=body.channel, tags=body.tags,
                                   current_token=current.strip() if scheme.lower() == "bearer"
                                   else None)
    if enrolled is None:
        count_auth_failure(request)
        raise ServerAPIError("invalid, expired, used-up or revoked enrollment token",
                             "unauthorized", 401)
    device, token = enrolled
    _crud.add_audit(session, actor=f"device:{device.id}", action="device.enroll",
                    target=f"device:{device.id}", details={"app": body.app})
    session.commit()
    fleet.remember_soon(DeviceEntry.of(device))
    return EnrollResponse(device_id=device.id, device_token=token)


@router.post("/{device_id}/reset", response_model=DevicePublic)
def reset_device(device_id: str, session: SessionDep, fleet: FleetDep,
                 operator: AdminDep) -> DevicePublic:
    """Revoke the device's token and let its id be enrolled again with an enrollment
    token (a device that lost its token, or a replaced one). Its record stays."""
    device = _crud.reset_device(session, device_id=device_id)
    _crud.add_audit(session, actor=operator.actor, action="device.reset",
                    target=f"device:{device.id}")
    session.commit()
    fleet.changed()  # the revoked token leaves every cache at its next refresh
    return DevicePublic.model_validate(device)


@router.post("/checkin", response_model=CheckinResponse)
async def checkin(body: CheckinRequest, device: DeviceDep, request: Request) -> Response:
    """What to install (or roll back to), and when to check next. May answer 503 with
    ``Retry-After`` when the server sheds load."""
    # The hot path: the answer is serialized once here (response_model documents it).
    answer = request.app.state.fleet.checkin(device, body)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/events", response_model=EventsResponse)
def report_events(body: EventsRequest, device: DeviceDep, session: SessionDep,
                  fleet: FleetDep, metrics: MetricsDep) -> EventsResponse:
    """Store lifecycle events once each, keyed by the ids the device made."""
    rows: list[dict[str, Any]] = []
    for event in body.events:
        rollout_id = event.rollout_id or fleet.rollout_for_event(device.app, event.version)
        rows.append({"event_id": event.id, "type": event.type, "at": event.at,
                     "version": event.version, "from_version": event.from_version,
                     "update_id": event.update_id, "rollout_id": rollout_id,
                     "reason": event.reason, "details": dict(event.details)})
    accepted, duplicates = _crud.insert_events(session, device_id=device.id, events=rows)
    session.commit()
    if accepted:
        fleet.changed()
        kinds = {row["event_id"]: row["type"] for row in rows}
        metrics.count_events(kinds[event_id] for event_id in accepted)
        crossing = _may_cross(fleet, device.app, [r for r in rows
                                                  if r["event_id"] in set(accepted)])
        if crossing:
            fleet.evaluate_reported(crossing)
    return EventsResponse(accepted=accepted, duplicates=duplicates)


def _may_cross(fleet: Fleet, app: str, rows: list[dict[str, Any]]) -> set[int]:
    """Rollouts a stored failure may have pushed over a threshold: judged now, not at
    the next tick. Only failures can halt, so a healthy fleet's reports cost nothing."""
    ids: set[int] = set()
    for row in rows:
        if row["type"] in FAILURE_EVENTS and row["rollout_id"]:
            ids.add(row["rollout_id"])
        elif row["type"] == EventType.HEALTH_REPORT and row["details"].get("ok") is not True:
            ids |= fleet.gated_rollouts(app)
    return ids


@router.get("/me", response_model=DevicePublic)
async def read_self(device: DeviceDep, fleet: FleetDep) -> DevicePublic:
    """The calling device's own record (a device token reads only its own)."""
    return await run_in_threadpool(_read_device, fleet, device.id)


def _read_device(fleet: Fleet, device_id: str) -> DevicePublic:
    with fleet.sessions() as session:
        row = _crud.get_or_404(session, Device, device_id, what="device")
        return DevicePublic.model_validate(row)


@router.get("", response_model=DevicesPublic)
def list_devices(session: SessionDep, _: ViewerDep, app: str | None = None,
                 channel: str | None = None, version: str | None = None,
                 tag: Annotated[list[str] | None, Query(max_length=20)] = None,
                 limit: Limit = 100, offset: Offset = 0) -> DevicesPublic:
    """The inventory: filter by app, channel, version and ``tag=KEY=VALUE``."""
    tags = dict(t.partition("=")[::2] for t in tag or [])
    rows, count = _crud.list_devices(session, app=app, channel=channel, version=version,
                                     tags=tags, limit=limit, offset=offset)
    return DevicesPublic(data=[DevicePublic.model_validate(r) for r in rows], count=count)


@router.get("/groups", response_model=GroupsPublic)
def list_groups(session: SessionDep, _: ViewerDep, app: str | None = None) -> GroupsPublic:
    """Device groups by tag: each tag value with its number of devices."""
    rows = _crud.list_groups(session, app=app)
    return GroupsPublic(data=[GroupPublic(tag=t, value=v, devices=n) for t, v, n in rows],
                        count=len(rows))


@router.get("/{device_id}", response_model=DevicePublic)
def read_device(device_id: str, session: SessionDep, _: ViewerDep) -> DevicePublic:
    return DevicePublic.model_validate(_crud.get_or_404(session, Device, device_id,
                                                        what="device"))


@router.get("/{device_id}/history", response_model=EventsPublic)
def device_history(device_id: str, session: SessionDep, _: ViewerDep,
                   limit: Limit = 100, offset: Offset = 0) -> EventsPublic:
    """The device's events, newest first."""
    _crud.get_or_404(session, Device, device_id, what="device")
    rows, count = _crud.device_events(session, device_id=device_id, limit=limit, offset=offset)
    return EventsPublic(data=[EventPublic.model_validate(r) for r in rows], count=count)
