"""An operator's actions on one device (admin): move, check now, remove, roll back, pin.

Reading devices (viewer) stays in ``devices``. Every action is audited, and each
process's token cache drops the device so its next check-in sees the change.
"""

from __future__ import annotations

from fastapi import APIRouter

from fleetup.server._device_actions import (
    move_device,
    pin_device,
    remove_device,
    request_check,
    rollback_device,
    unpin_device,
)
from fleetup.server._models import Device
from fleetup.server._schemas import DeviceMove, DevicePin, DevicePublic, DeviceRollback
from fleetup.server.deps import AdminDep, FleetDep, SessionDep

router = APIRouter(prefix="/devices", tags=["devices"])


def _done(session: SessionDep, fleet: FleetDep, device: Device, token_hash: str
          ) -> DevicePublic:
    session.commit()
    fleet.forget(token_hash)  # this process at once; the others at their next refresh
    return DevicePublic.model_validate(device)


@router.post("/{device_id}/move", response_model=DevicePublic)
def move(device_id: str, body: DeviceMove, session: SessionDep, fleet: FleetDep,
         operator: AdminDep) -> DevicePublic:
    """Decide for the device by ``channel`` instead of the one it is configured with
    (``null``: its own again)."""
    device, key = move_device(session, device_id=device_id, channel=body.channel,
                              actor=operator.actor)
    return _done(session, fleet, device, key)


@router.post("/{device_id}/check", response_model=DevicePublic)
async def check(device_id: str, fleet: FleetDep, operator: AdminDep) -> DevicePublic:
    """Ask the device to check in now: over NATS where push is on (a nudge on its
    channel's subject), and in any case its next check-in answer says "check again
    soon"."""
    from fastapi.concurrency import run_in_threadpool

    pushed = fleet.pusher is not None
    public, app, channel = await run_in_threadpool(_flag, fleet, device_id, operator.actor,
                                                   pushed)
    if fleet.pusher is not None:
        await fleet.pusher.publish([(app, channel, f"check device {device_id}")])
    return public


def _flag(fleet: FleetDep, device_id: str, actor: str, pushed: bool
          ) -> tuple[DevicePublic, str, str]:
    with fleet.sessions() as session:
        device, key = request_check(session, device_id=device_id, actor=actor, pushed=pushed)
        # The device listens on the subject of the channel it is configured with.
        return _done(session, fleet, device, key), device.app, device.channel


@router.post("/{device_id}/remove", response_model=DevicePublic)
def remove(device_id: str, session: SessionDep, fleet: FleetDep,
           operator: AdminDep) -> DevicePublic:
    """Revoke the device's token (it must enroll again to come back); its record and
    history stay."""
    device, key = remove_device(session, device_id=device_id, actor=operator.actor)
    return _done(session, fleet, device, key)


@router.post("/{device_id}/rollback", response_model=DevicePublic)
def rollback(device_id: str, body: DeviceRollback, session: SessionDep, fleet: FleetDep,
             operator: AdminDep) -> DevicePublic:
    """Order this device alone back to a version it keeps (409 if it keeps none such)."""
    device, key = rollback_device(session, device_id=device_id, to=body.to,
                                  actor=operator.actor)
    return _done(session, fleet, device, key)


@router.post("/{device_id}/pin", response_model=DevicePublic)
def pin(device_id: str, body: DevicePin, session: SessionDep, fleet: FleetDep,
        operator: AdminDep) -> DevicePublic:
    """Leave the device out of rollouts and have it run ``version``."""
    device, key = pin_device(session, device_id=device_id, version=body.version,
                             actor=operator.actor)
    return _done(session, fleet, device, key)


@router.post("/{device_id}/unpin", response_model=DevicePublic)
def unpin(device_id: str, session: SessionDep, fleet: FleetDep,
          operator: AdminDep) -> DevicePublic:
    """Let rollouts reach the device again."""
    device, key = unpin_device(session, device_id=device_id, actor=operator.actor)
    return _done(session, fleet, device, key)
