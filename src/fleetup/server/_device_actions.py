"""An operator's actions on one device: move it, ask it to check in, remove it.

Checks, changes and the audit row in one place, like ``_operations``; the caller
commits. Each process's token cache learns of a change through ``revoked_tokens``
(the device's current token hash is recorded there, so every process drops its cached
entry within seconds and reloads it, or — after a removal — finds no device).
"""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._auth import hash_token
from fleetup.server._models import Device, RevokedToken, utcnow

__all__ = ["move_device", "remove_device", "request_check"]


def _active(session: Session, device_id: str) -> Device:
    """The device, unless removed.

    Raises:
        ServerAPIError: 404 no such device; 409 it was removed.
    """
    device = _crud.get_or_404(session, Device, device_id, what="device")
    if device.removed_at is not None:
        raise ServerAPIError(f"device {device_id} was removed", "device_removed", 409)
    return device


def _reload_everywhere(session: Session, device: Device) -> str:
    """Make every server process drop its cached entry of ``device``; returns the
    token hash it had (the cache key)."""
    session.add(RevokedToken(token_hash=device.token_hash, revoked_at=utcnow()))
    return device.token_hash


def move_device(session: Session, *, device_id: str, channel: str | None, actor: str
                ) -> tuple[Device, str]:
    """Decide for the device as if it were on ``channel`` (``None``: its configured
    channel again). Returns the device and the cache key to drop.

    Raises:
        ServerAPIError: 404 no such device or channel; 409 the device was removed.
    """
    device = _active(session, device_id)
    if channel is not None and channel not in {c.name for c in _crud.list_channels(session)}:
        raise ServerAPIError(f"no channel {channel!r}", "unknown_channel", 404)
    before = device.channel_override
    device.channel_override = None if channel == device.channel else channel
    _crud.add_audit(session, actor=actor, action="device.move", target=f"device:{device.id}",
                    details={"from": before or device.channel,
                             "to": device.channel_override or device.channel})
    return device, _reload_everywhere(session, device)


def request_check(session: Session, *, device_id: str, actor: str, pushed: bool
                  ) -> tuple[Device, str]:
    """Flag the device so its next check-in answer says "check again soon" (``pushed``:
    a NATS message asks it to check in now as well). Returns the device and cache key.

    Raises:
        ServerAPIError: 404 no such device; 409 the device was removed.
    """
    device = _active(session, device_id)
    device.check_requested_at = utcnow()
    _crud.add_audit(session, actor=actor, action="device.check", target=f"device:{device.id}",
                    details={"push": pushed})
    return device, _reload_everywhere(session, device)


def remove_device(session: Session, *, device_id: str, actor: str) -> tuple[Device, str]:
    """Revoke the device's token and mark it removed; its row and events stay. Removing
    a removed device changes nothing. Returns the device and the revoked token's hash.

    Raises:
        ServerAPIError: 404 no such device.
    """
    device = _crud.get_or_404(session, Device, device_id, what="device")
    if device.removed_at is not None:
        return device, device.token_hash
    old = _reload_everywhere(session, device)
    # A hash of random bytes nobody holds: the unique column stays filled, no token
    # matches it, and the device must enroll again to come back.
    device.token_hash = hash_token(secrets.token_urlsafe(32))
    device.removed_at = utcnow()
    _crud.add_audit(session, actor=actor, action="device.remove",
                    target=f"device:{device.id}", details={"version": device.version})
    return device, old
