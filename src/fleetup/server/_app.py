"""The FastAPI application: routes, the signed repository under /repo/, JSON errors,
the operator dashboard at / (``dashboard``), Prometheus metrics at /metrics.

Every API error leaves as ``{"error": {"code": ..., "message": ...}}`` with a stable code:
fleetup's own errors, FastAPI's validation errors (422), Starlette's 404/405, database
conflicts (409) and outages (503), and anything unexpected (500, logged). A browser
asking for a dashboard page gets the same errors as HTML pages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from fleetup._push import import_nats
from fleetup._version import __version__
from fleetup.errors import (
    FleetupError,
    IntegrityError,
    MetadataExpiredError,
    RepositoryError,
    RollbackAttackError,
    ServerAPIError,
    SigningKeyError,
    StorageError,
    TrustError,
    UsageError,
)
from fleetup.server._alerts import AlertService
from fleetup.server._checkin import MAX_BODY, CheckinEndpoint
from fleetup.server._db import make_engine
from fleetup.server._fleet import Fleet
from fleetup.server._limits import BodyLimits, body_caps
from fleetup.server._metrics import Metrics, MetricsMiddleware, metrics_endpoint
from fleetup.server._push import Pusher
from fleetup.server._ratelimit import FailureLimiter
from fleetup.server._settings import Settings
from fleetup.server.dashboard import install_dashboard
from fleetup.server.routes import api_router

__all__ = ["CHECKIN_PATH", "create_app"]

log = logging.getLogger("fleetup.server")

API_PREFIX = "/api/v1"
CHECKIN_PATH = f"{API_PREFIX}/devices/checkin"

# fleetup errors raised while handling a request: (HTTP status, code). First match wins.
_ERROR_STATUS: tuple[tuple[type[FleetupError], int, str], ...] = (
    (RollbackAttackError, 409, "version_not_newer"),
    (IntegrityError, 422, "integrity_error"),
    (TrustError, 422, "untrusted_metadata"),
    (MetadataExpiredError, 422, "metadata_expired"),
    (SigningKeyError, 409, "online_keys_mismatch"),
    (RepositoryError, 409, "repository_error"),
    (UsageError, 422, "invalid_request"),
    (StorageError, 503, "storage_unavailable"),
)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}},
                        status_code=status, headers=headers)


async def _on_server_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServerAPIError)
    headers = {"Retry-After": str(round(exc.retry_after))} if exc.retry_after else None
    if exc.status_code == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return _error(exc.status_code or 400, exc.code, str(exc), headers)


async def _on_fleetup_error(_: Request, exc: Exception) -> JSONResponse:
    for kind, status, code in _ERROR_STATUS:
        if isinstance(exc, kind):
            return _error(status, code, str(exc))
    log.error("unexpected fleetup error: %s", exc)
    return _error(500, "internal_error", str(exc))


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                for e in exc.errors()]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    message = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
    return _error(422, "invalid_request", message, problems=problems)


async def _on_db_conflict(_: Request, exc: Exception) -> JSONResponse:
    return _error(409, "conflict", "the change conflicts with existing data")


async def _on_db_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return _error(503, "database_unavailable", "the database is unavailable; try again",
                  {"Retry-After": "5"})


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error", exc_info=exc)
    return _error(500, "internal_error", "internal server error")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The server app; settings from ``FLEETUP_SERVER_*`` variables when not given.

    The database schema must already be current (``fleetup server`` upgrades it
    before it starts the workers).
    """
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    pusher = None
    if settings.nats_url:
        import_nats()  # a missing nats-py is a clear error here, not a dead task later
        pusher = Pusher(settings.nats_url, f"fleetup-server-{os.getpid()}")
    fleet = Fleet(settings, engine, pusher=pusher)
    alerts = AlertService(fleet)
    metrics = Metrics(fleet.sessions, CHECKIN_PATH)
    limiter = FailureLimiter(settings.auth_failure_burst, settings.auth_failures_per_minute)
    for directory in (settings.repo_dir / "metadata", settings.repo_dir / "targets"):
        directory.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await fleet.start()
        await alerts.start()
        try:
            yield
        finally:
            await alerts.stop()
            await fleet.stop()
            engine.dispose()

    app = FastAPI(title="fleetup fleet server", version=__version__, lifespan=lifespan,
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.fleet = fleet
    app.state.metrics = metrics
    app.state.auth_limiter = limiter
    app.include_router(api_router, prefix=API_PREFIX)
    app.mount("/repo/metadata", StaticFiles(directory=settings.repo_dir / "metadata"),
              name="repo-metadata")
    app.mount("/repo/targets", StaticFiles(directory=settings.repo_dir / "targets"),
              name="repo-targets")
    app.add_api_route("/healthz", _healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    if settings.benchmark_routes:
        app.add_api_route(f"{API_PREFIX}/bench/constant", _constant, methods=["GET", "POST"],
                          include_in_schema=False)
    app.add_exception_handler(ServerAPIError, _on_server_api_error)
    app.add_exception_handler(FleetupError, _on_fleetup_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(DBIntegrityError, _on_db_conflict)
    app.add_exception_handler(OperationalError, _on_db_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)
    install_dashboard(app)  # after the handlers above: it wraps them for browsers
    app.add_middleware(CheckinEndpoint, fleet=fleet, path=CHECKIN_PATH,
                       fast=settings.fast_checkin, limiter=limiter)
    # In front of the check-in fast path: a body over its cap is refused unread.
    app.add_middleware(BodyLimits, caps=body_caps(settings, API_PREFIX, MAX_BODY),
                       default=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times check-ins too
    return app


async def _healthz() -> dict[str, str]:
    return {"status": "ok"}


_CONSTANT = {"action": "none", "version": None, "target": None, "rollout_id": None,
             "reason": "constant", "next_check_seconds": 300}


async def _constant() -> dict[str, Any]:
    """The benchmark's baseline: the same server answering a constant JSON (any body
    sent with a POST is not read)."""
    return _CONSTANT
