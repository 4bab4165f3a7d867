"""FastAPI dependencies, as ``Annotated`` aliases the routes declare as parameters.

``SessionDep`` is a database session; ``ViewerDep``/``PublisherDep``/``AdminDep`` are
the operator behind the bearer token, refused (401/403) unless their role is at least
the one named; ``DeviceDep`` is the device behind a device token. Every refusal is a
:class:`~fleetup.errors.ServerAPIError`, rendered as ``{"error": {...}}`` by the app.
A refused token counts against its client address (``_ratelimit``): past the limit,
:func:`refuse_if_limited` answers 429 before any token is looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._auth import Role, TokenKind, hash_token, role_allows
from fleetup.server._fleet import DeviceEntry, Fleet
from fleetup.server._metrics import Metrics
from fleetup.server._ratelimit import FailureLimiter, client_key
from fleetup.server._settings import Settings

__all__ = ["AdminDep", "DeviceDep", "FleetDep", "MetricsDep", "Operator", "PublisherDep",
           "SessionDep", "SettingsDep", "ViewerDep", "count_auth_failure", "rate_limited",
           "refuse_if_limited"]

_bearer = HTTPBearer(auto_error=False, description="An operator or device token.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


# Trivial dependencies are ``async def``: FastAPI runs a plain ``def`` in a worker
# thread, a hop that would cost the check-in path more than the check-in itself.
async def get_fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


FleetDep = Annotated[Fleet, Depends(get_fleet)]


async def get_settings(fleet: FleetDep) -> Settings:
    return fleet.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def get_session(fleet: FleetDep) -> Iterator[Session]:
    with fleet.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True, slots=True)
class Operator:
    """The operator behind a request's token."""

    id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        """How the audit log names them."""
        return f"token:{self.id}:{self.name}"


def _limiter_and_key(request: Request) -> tuple[FailureLimiter, str]:
    limiter: FailureLimiter = request.app.state.auth_limiter
    return limiter, client_key(request.client.host if request.client else None)


def rate_limited(retry_after: float) -> ServerAPIError:
    """The 429 of an address that failed to authenticate too often."""
    return ServerAPIError("too many failed sign-ins from this address; try again later",
                          "rate_limited", 429, retry_after=max(1.0, retry_after))


def refuse_if_limited(request: Request) -> None:
    """Refuse a client that failed to authenticate too often, before its credential is
    looked at.

    Raises:
        ServerAPIError: 429 ``rate_limited`` with ``retry_after``.
    """
    limiter, key = _limiter_and_key(request)
    wait = limiter.retry_after(key)
    if wait is not None:
        raise rate_limited(wait)


def count_auth_failure(request: Request) -> None:
    """Count a refused credential against the request's client address."""
    limiter, key = _limiter_and_key(request)
    limiter.failed(key)


def _unauthorized(message: str, request: Request | None = None) -> ServerAPIError:
    if request is not None:
        count_auth_failure(request)
    return ServerAPIError(message, "unauthorized", 401)


def _operator_with(needed: Role) -> Callable[
        [Request, Session, HTTPAuthorizationCredentials | None], Operator]:
    def require(request: Request, session: SessionDep, credentials: Credentials) -> Operator:
        if credentials is None:
            raise _unauthorized("this endpoint needs an operator token "
                                "(Authorization: Bearer ...)")
        refuse_if_limited(request)
        token = credentials.credentials
        if not token.startswith(TokenKind.OPERATOR.value):
            raise _unauthorized("not an operator token", request)
        row = _crud.find_operator(session, token_hash=hash_token(token))
        if row is None:
            raise _unauthorized("unknown or revoked operator token", request)
        held = Role(row.role)
        if not role_allows(held, needed):
            raise ServerAPIError(f"this needs the {needed} role; the token has {held}",
                                 "forbidden", 403)
        return Operator(row.id, row.name, held)

    require.required_role = needed  # type: ignore[attr-defined]  # read by the auth tests
    return require


require_viewer = _operator_with(Role.VIEWER)
require_publisher = _operator_with(Role.PUBLISHER)
require_admin = _operator_with(Role.ADMIN)

ViewerDep = Annotated[Operator, Depends(require_viewer)]
PublisherDep = Annotated[Operator, Depends(require_publisher)]
AdminDep = Annotated[Operator, Depends(require_admin)]


async def require_device(request: Request) -> DeviceEntry:
    # Reads the header itself and has no sub-dependencies: this runs on every check-in,
    # where FastAPI's dependency solving is a measurable share of the cost.
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("this endpoint needs a device token (Authorization: Bearer ...)")
    refuse_if_limited(request)
    fleet: Fleet = request.app.state.fleet
    entry = await fleet.device_for(token)
    if entry is None:
        raise _unauthorized("unknown device token: enroll again", request)
    return entry


require_device.required_role = "device"  # type: ignore[attr-defined]

DeviceDep = Annotated[DeviceEntry, Depends(require_device)]
