"""An operator's actions on one device: move it, ask it to check in, remove it.

Checks, changes and the audit row in one place, like ``_operations``; the caller
commits. Each process's token cache learns of a change through ``revoked_tokens``
(the device's current token hash is recorded there, so every process drops its cached
entry within seconds and reloads it, or — after a removal — finds no device).
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._auth import hash_token
from fleetup.server._models import Device, Release, RevokedToken, utcnow

__all__ = ["move_device", "pin_device", "remove_device", "request_check", "rollback_device",
           "unpin_device"]


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


def rollback_device(session: Session, *, device_id: str, to: str | None, actor: str
                    ) -> tuple[Device, str]:
    """Order this device alone back to ``to`` (``None``: the version it ran before), one
    the device reports it keeps; the order ends when it runs that version, and no
    rollout offers it the version it left again until it is pinned or unpinned.

    Raises:
        ServerAPIError: 404 no such device; 409 removed, pinned, nothing to go back to,
            or the device does not report that version as kept.
    """
    device = _active(session, device_id)
    target = to or device.previous_version
    if device.pinned_version is not None:
        raise ServerAPIError(f"device {device_id} is pinned to {device.pinned_version}: "
                             "pin it to the version instead", "device_pinned", 409)
    if target is None:
        raise ServerAPIError(f"device {device_id} reports no earlier version",
                             "nothing_to_roll_back_to", 409)
    if target not in (device.kept or []):
        kept = ", ".join(map(str, device.kept or [])) or "none"
        raise ServerAPIError(f"device {device_id} does not keep {target} (it keeps: {kept})",
                             "version_not_kept", 409)
    if target != device.version:
        device.rollback_to, device.rolled_back_from = target, device.version
    _crud.add_audit(session, actor=actor, action="device.rollback",
                    target=f"device:{device.id}", details={"from": device.version, "to": target})
    return device, _reload_everywhere(session, device)


def pin_device(session: Session, *, device_id: str, version: str, actor: str
               ) -> tuple[Device, str]:
    """Leave the device out of rollouts and tell it to run ``version`` (a release the
    server has for its app and platform; the agent still checks the signed facts).

    Raises:
        ServerAPIError: 404 no such device or release; 409 the device was removed.
    """
    device = _active(session, device_id)
    known = session.scalars(select(Release.id).where(
        Release.app == device.app, Release.version == version,
        Release.platform == device.platform)).first()
    if known is None:
        raise ServerAPIError(f"the server has no release {version} of {device.app} for "
                             f"{device.platform}", "unknown_release", 404)
    before, device.pinned_version = device.pinned_version, version
    device.rollback_to = device.rolled_back_from = None  # the operator's newer word
    _crud.add_audit(session, actor=actor, action="device.pin", target=f"device:{device.id}",
                    details={"from": before, "to": version, "running": device.version})
    return device, _reload_everywhere(session, device)


def unpin_device(session: Session, *, device_id: str, actor: str) -> tuple[Device, str]:
    """Let rollouts reach the device again (unpinning an unpinned device changes nothing
    but is audited all the same).

    Raises:
        ServerAPIError: 404 no such device; 409 the device was removed.
    """
    device = _active(session, device_id)
    before, device.pinned_version = device.pinned_version, None
    device.rolled_back_from = None  # rollouts reach it again, with any version
    _crud.add_audit(session, actor=actor, action="device.unpin",
                    target=f"device:{device.id}", details={"was": before})
    return device, _reload_everywhere(session, device)
