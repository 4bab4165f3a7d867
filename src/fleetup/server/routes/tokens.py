"""Operator API tokens and device enrollment tokens (admins only)."""

from __future__ import annotations

from fastapi import APIRouter

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._schemas import (
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenPublic,
    EnrollmentTokensPublic,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    TokensPublic,
)
from fleetup.server.deps import AdminDep, SessionDep
from fleetup.server.routes._params import RowId

router = APIRouter(tags=["tokens"])


@router.get("/tokens", response_model=TokensPublic)
def list_tokens(session: SessionDep, _: AdminDep) -> TokensPublic:
    rows = _crud.list_operator_tokens(session)
    return TokensPublic(data=[TokenPublic.model_validate(r) for r in rows], count=len(rows))


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, operator: AdminDep) -> TokenCreated:
    """A new operator token; the token itself is in this answer only."""
    row, token = _crud.create_operator_token(session, role=body.role, name=body.name,
                                             created_by=operator.actor)
    _crud.add_audit(session, actor=operator.actor, action="token.create",
                    target=f"token:{row.id}", details={"role": body.role, "name": row.name})
    session.commit()
    return TokenCreated(**TokenPublic.model_validate(row).model_dump(), token=token)


@router.delete("/tokens/{token_id}", response_model=TokenPublic)
def revoke_token(token_id: RowId, session: SessionDep, operator: AdminDep) -> TokenPublic:
    row = _crud.revoke_operator_token(session, token_id=token_id)
    if row is None:
        raise ServerAPIError("no such token", "not_found", 404)
    _crud.add_audit(session, actor=operator.actor, action="token.revoke",
                    target=f"token:{token_id}")
    session.commit()
    return TokenPublic.model_validate(row)


@router.get("/enrollment-tokens", response_model=EnrollmentTokensPublic)
def list_enrollment_tokens(session: SessionDep, _: AdminDep) -> EnrollmentTokensPublic:
    rows = _crud.list_enrollment_tokens(session)
    return EnrollmentTokensPublic(data=[EnrollmentTokenPublic.model_validate(r) for r in rows],
                                  count=len(rows))


@router.post("/enrollment-tokens", response_model=EnrollmentTokenCreated, status_code=201)
def create_enrollment_token(body: EnrollmentTokenCreate, session: SessionDep,
                            operator: AdminDep) -> EnrollmentTokenCreated:
    row, token = _crud.create_enrollment_token(session, name=body.name,
                                               created_by=operator.actor,
                                               max_uses=body.max_uses,
                                               expires_at=body.expires_at)
    _crud.add_audit(session, actor=operator.actor, action="enrollment_token.create",
                    target=f"enrollment_token:{row.id}")
    session.commit()
    return EnrollmentTokenCreated(**EnrollmentTokenPublic.model_validate(row).model_dump(),
                                  token=token)
