"""Rendering the dashboard: the Jinja2 environment, its filters, security headers, and
the HTML error pages that replace the API's JSON errors for a browser.

Why separate from the routes: every page goes through :func:`render`, so the headers
that keep the pages safe (a strict Content-Security-Policy allowing only this
server's own CSS and JS, no framing, no caching of signed-in pages) are set once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetup._version import __version__
from fleetup.errors import ServerAPIError
from fleetup.server._models import utcnow
from fleetup.server.dashboard._history import short_hashes
from fleetup.server.dashboard._session import LoginRequired, PageError

__all__ = ["NOTICES", "is_page", "on_login_required", "on_page_error", "pages_in_html",
           "render", "templates"]

Handler = Callable[[Request, Any], Response | Awaitable[Response]]

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# ?done=... after a POST-redirect-GET: a fixed message each, nothing echoed back.
NOTICES = {
    "pause": "Rollout paused.", "resume": "Rollout resumed.", "advance": "Rollout advanced.",
    "abort": "Rollout aborted.", "start": "Rollout started.", "ack": "Alert acknowledged.",
    "rule-created": "Alert rule created.", "rule-deleted": "Alert rule deleted.",
    "rule-updated": "Alert rule updated.", "signed-out": "Signed out.",
    "flag-set": "Flag value set.", "flag-unset": "Flag value removed.",
}

_NOT_PAGES = ("/api/", "/repo/", "/static/")
_NOT_PAGE_PATHS = frozenset({"/metrics", "/healthz", "/openapi.json", "/docs",
                             "/docs/oauth2-redirect"})
_TITLES = {400: "Bad request", 401: "Sign in needed", 403: "Not allowed",
           404: "Not found", 405: "Not allowed", 409: "Conflict",
           422: "Invalid request", 503: "Unavailable"}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "never"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (utcnow() - value).total_seconds()
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172_800, "h", 3600)):
        if seconds < limit:
            return f"{max(seconds, 0) / size:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


templates.env.filters.update(when=_when, ago=_ago, pct=_pct, seconds=_seconds,
                             short=short_hashes)
templates.env.globals.update(version=__version__)


def render(request: Request, name: str, status_code: int = 200, **context: Any
           ) -> HTMLResponse:
    """A page from ``templates/name`` with the dashboard's security headers."""
    notice = NOTICES.get(request.query_params.get("done", ""))
    response = templates.TemplateResponse(request, name, {"notice": notice, **context},
                                          status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status, title=_TITLES.get(status, "Error"),
                  code=status, message=message, user=None)


def is_page(request: Request) -> bool:
    """Whether a request is a browser's, for the dashboard (so errors are HTML)."""
    path = request.url.path
    if path.startswith(_NOT_PAGES) or path in _NOT_PAGE_PATHS:
        return False
    return "text/html" in request.headers.get("accept", "") or request.method == "POST"


async def on_page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return error_page(request, exc.status, exc.message)


async def on_login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    from urllib.parse import quote

    target = "/login" if exc.next_path in ("", "/") else f"/login?next={quote(exc.next_path)}"
    return RedirectResponse(target, status_code=303)


def pages_in_html(previous: Handler) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Wrap the API's JSON error handler: a browser asking for a dashboard page gets
    an HTML error page instead; everything else is answered as before."""

    async def answer_as_before(request: Request, exc: Exception) -> Response:
        result = previous(request, exc)
        return await result if inspect.isawaitable(result) else result

    async def handle(request: Request, exc: Exception) -> Response:
        if not is_page(request):
            return await answer_as_before(request, exc)
        if isinstance(exc, ServerAPIError):
            return error_page(request, exc.status_code or 400, str(exc))
        if isinstance(exc, HTTPException):
            message = ("There is no such page." if exc.status_code == 404
                       else str(exc.detail))
            return error_page(request, exc.status_code, message)
        if isinstance(exc, RequestValidationError):
            problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: "
                                 f"{e.get('msg', '')}" for e in exc.errors())
            return error_page(request, 422, f"The form was incomplete or invalid: {problems}")
        return await answer_as_before(request, exc)

    return handle
