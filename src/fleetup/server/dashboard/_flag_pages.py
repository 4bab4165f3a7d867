"""The feature-flags page: an app's flag values by scope, read by every operator and
changed by admins, through the same ``_flags`` functions as the REST API (so the
``flag.set``/``flag.unset`` audit rows are written by one owner).

Forms are CSRF- and role-checked (``AdminFormDep``) and answered with a redirect back
to the page (POST-redirect-GET), like the other dashboard pages.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from fleetup.server import _crud
from fleetup.server._flags import SCOPES, check_value, delete_flag, list_flags, scope_of, set_flag
from fleetup.server._models import FeatureFlag
from fleetup.server._schemas import Name
from fleetup.server.dashboard._render import render
from fleetup.server.dashboard._session import AdminFormDep, PageError, PageUserDep
from fleetup.server.deps import FleetDep, SessionDep
from fleetup.server.routes._params import no_nul_in_url

__all__ = ["router"]

router = APIRouter(include_in_schema=False, dependencies=[Depends(no_nul_in_url)])

Scope = Literal["default", "channel", "group", "device"]
# Shown least specific first: the order an operator reads overrides in.
_SHOWN = tuple(reversed(SCOPES))
_MAX_VALUE_TEXT = 2000  # a JSON scalar of at most MAX_STRING characters fits


@router.get("/flags", response_class=HTMLResponse)
def flags(request: Request, session: SessionDep, user: PageUserDep,
          app: Annotated[str, Query(max_length=100)] = "") -> Response:
    """Pick an app (those with releases or flags); its values grouped by scope."""
    apps = sorted({r.app for r in _crud.list_releases(session)}
                  | set(session.scalars(select(FeatureFlag.app).distinct())))
    app = app or (apps[0] if apps else "")
    rows = list_flags(session, app=app) if app else []
    by_scope = [(scope, [r for r in rows if r.scope == scope]) for scope in _SHOWN]
    return render(request, "flags.html", user=user, active="flags", apps=apps, app=app,
                  by_scope=by_scope, count=len(rows), scopes=_SHOWN)


def _back(app: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"/flags?{urlencode({'app': app, 'done': done})}",
                            status_code=303)


def _parse_value(text: str) -> object:
    """The form's value as JSON (``true``, ``3``, ``"blue"``); a bare word that is not
    JSON is taken as a string, so ``blue`` need not be quoted."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    check_value(value)  # refuses objects, lists and null with the API's message
    return value


@router.post("/flags/{app}/set")
def set_value(app: Name, session: SessionDep, fleet: FleetDep, user: AdminFormDep,
              name: Annotated[str, Form(max_length=100)],
              value: Annotated[str, Form(max_length=_MAX_VALUE_TEXT)],
              scope: Annotated[Scope, Form()] = "default",
              key: Annotated[str, Form(max_length=200)] = "") -> Response:
    """Set one value, as ``PUT /api/v1/flags/{app}/{name}`` does."""
    if not value.strip():
        raise PageError(422, "A flag needs a value (JSON: true, 3, \"blue\").")
    scope_name, scope_key = _scope(scope, key)
    set_flag(session, app=app, name=name.strip(), scope=scope_name, key=scope_key,
             value=_parse_value(value.strip()), actor=user.operator.actor)
    session.commit()
    fleet.changed()
    return _back(app, "flag-set")


@router.post("/flags/{app}/unset")
def unset_value(app: Name, session: SessionDep, fleet: FleetDep, user: AdminFormDep,
                name: Annotated[str, Form(max_length=100)],
                scope: Annotated[Scope, Form()] = "default",
                key: Annotated[str, Form(max_length=200)] = "") -> Response:
    """Remove one value, as ``DELETE /api/v1/flags/{app}/{name}`` does."""
    scope_name, scope_key = _scope(scope, key)
    delete_flag(session, app=app, name=name, scope=scope_name, key=scope_key,
                actor=user.operator.actor)
    session.commit()
    fleet.changed()
    return _back(app, "flag-unset")


def _scope(scope: Scope, key: str) -> tuple[str, str]:
    """``(scope, key)`` checked by the API's own :func:`scope_of`."""
    if scope == "default":
        return scope_of(None, None, None)
    given = {"channel": None, "group": None, "device": None} | {scope: key.strip()}
    return scope_of(given["channel"], given["group"], given["device"])
