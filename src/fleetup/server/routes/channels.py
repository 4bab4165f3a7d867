"""Channels: stable, beta and canary exist; admins add custom ones."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._schemas import ChannelCreate, ChannelPublic, ChannelsPublic
from fleetup.server.deps import AdminDep, SessionDep, ViewerDep

router = APIRouter(prefix="/channels", tags=["channels"])


@router.get("", response_model=ChannelsPublic)
def list_channels(session: SessionDep, _: ViewerDep) -> ChannelsPublic:
    rows = _crud.list_channels(session)
    return ChannelsPublic(data=[ChannelPublic.model_validate(r) for r in rows], count=len(rows))


@router.post("", response_model=ChannelPublic, status_code=201)
def create_channel(body: ChannelCreate, session: SessionDep, operator: AdminDep
                   ) -> ChannelPublic:
    try:
        row = _crud.create_channel(session, name=body.name, description=body.description)
    except IntegrityError as e:
        raise ServerAPIError(f"channel {body.name!r} exists", "conflict", 409) from e
    _crud.add_audit(session, actor=operator.actor, action="channel.create",
                    target=f"channel:{body.name}")
    session.commit()
    return ChannelPublic.model_validate(row)
