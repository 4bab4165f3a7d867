"""The operator dashboard, served by ``fleetup server`` at ``/``.

Server-rendered pages (Jinja2 templates, inline SVG charts, one small script for
auto-refresh and confirm dialogs, one stylesheet), all shipped in this package: no
front-end build step and nothing loaded from the internet. Operators sign in with
their API token (``_session``); the pages (``_pages``) read and change the fleet
through the same functions as the REST API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from fleetup.errors import ServerAPIError
from fleetup.server.dashboard._flag_pages import router as flag_router
from fleetup.server.dashboard._pages import router
from fleetup.server.dashboard._render import on_login_required, on_page_error, pages_in_html
from fleetup.server.dashboard._session import LoginRequired, PageError

__all__ = ["install_dashboard"]

STATIC = Path(__file__).parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """Add the pages, ``/static/``, and HTML error pages for browsers.

    Call it after the app's own exception handlers are registered: it wraps them, so a
    browser asking for a page gets HTML while API clients keep their JSON errors.
    """
    app.include_router(router)
    app.include_router(flag_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.add_exception_handler(PageError, on_page_error)
    app.add_exception_handler(LoginRequired, on_login_required)
    for kind in (HTTPException, ServerAPIError, RequestValidationError):
        previous = app.exception_handlers.get(kind)
        if previous is not None:
            app.add_exception_handler(kind, pages_in_html(previous))
