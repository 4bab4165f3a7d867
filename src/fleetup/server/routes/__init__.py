"""The REST API under ``/api/v1``: one module per resource, each route a few lines."""

from fastapi import APIRouter, Depends

from fleetup.server._schemas import ErrorResponse
from fleetup.server.routes import (
    alerts,
    analytics,
    audit,
    channels,
    device_actions,
    devices,
    flags,
    notifications,
    releases,
    rollouts,
    tokens,
)
from fleetup.server.routes._params import no_nul_in_url

__all__ = ["api_router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)}

api_router = APIRouter(responses=_ERRORS, dependencies=[Depends(no_nul_in_url)])
for module in (devices, releases, rollouts, channels, tokens, audit, analytics, alerts,
               notifications):
    api_router.include_router(module.router)
api_router.include_router(device_actions.router)
api_router.include_router(flags.router)
