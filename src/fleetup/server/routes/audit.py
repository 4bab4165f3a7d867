"""The audit log: who changed what, when. Operators of every role may read it (a viewer
sees everything, as on the dashboard, and can change nothing)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetup.server import _crud
from fleetup.server._schemas import AuditEntriesPublic, AuditEntryPublic
from fleetup.server.deps import SessionDep, ViewerDep
from fleetup.server.routes._params import Offset

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=AuditEntriesPublic)
def list_audit(session: SessionDep, _: ViewerDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               offset: Offset = 0) -> AuditEntriesPublic:
    """Newest first."""
    rows, count = _crud.list_audit(session, limit=limit, offset=offset)
    return AuditEntriesPublic(data=[AuditEntryPublic.model_validate(r) for r in rows],
                              count=count)
