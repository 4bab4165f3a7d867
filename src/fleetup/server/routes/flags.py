"""Feature flags of an app (viewers read, admins change; every change audited).

A change reloads this process's check-in cache at once; the other processes pick it
up at their next cache refresh (``cache_seconds``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fleetup.server._flags import delete_flag, list_flags, scope_of, set_flag
from fleetup.server._schemas import FlagPublic, FlagSet, Name
from fleetup.server.deps import AdminDep, FleetDep, SessionDep, ViewerDep

router = APIRouter(prefix="/flags", tags=["flags"])


@router.get("/{app}", response_model=list[FlagPublic])
def list_(app: Name, session: SessionDep, _viewer: ViewerDep) -> list[FlagPublic]:
    """Every stored value of the app's flags, by name and scope."""
    return [FlagPublic.model_validate(row) for row in list_flags(session, app=app)]


@router.put("/{app}/{name}", response_model=FlagPublic)
def put(app: Name, name: str, body: FlagSet, session: SessionDep, fleet: FleetDep,
        operator: AdminDep) -> FlagPublic:
    """Set the flag's value for the default, a channel, a group or a device."""
    scope, key = scope_of(body.channel, body.group, body.device)
    row = set_flag(session, app=app, name=name, scope=scope, key=key, value=body.value,
                   actor=operator.actor)
    session.commit()
    fleet.changed()
    return FlagPublic.model_validate(row)


@router.delete("/{app}/{name}")
def delete(app: Name, name: str, session: SessionDep, fleet: FleetDep, operator: AdminDep,
           channel: str | None = None, group: str | None = None,
           device: str | None = None) -> dict[str, Any]:
    """Remove one value (the query names its scope; none: the default)."""
    scope, key = scope_of(channel, group, device)
    delete_flag(session, app=app, name=name, scope=scope, key=key, actor=operator.actor)
    session.commit()
    fleet.changed()
    return {"app": app, "name": name, "scope": scope, "scope_key": key, "removed": True}
