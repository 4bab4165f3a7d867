"""The dashboard's pages: thin routes that read through the same queries and operations
as the REST API (``_crud``, ``_operations``, ``_analytics``, ``_alerts``) and render a
template. Changes are POST forms (CSRF-checked, role-checked) answered with a redirect
back to the page (POST-redirect-GET), so a reload never repeats an action.

Roles: every page is open to any signed-in operator (a viewer sees everything);
rollout controls, starting rollouts and acknowledging alerts need ``publisher``;
managing alert rules needs ``admin``.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import func as sa_func
from sqlalchemy import select

from fleetup._cohort import cohort_of
from fleetup._groups import parse_group
from fleetup.errors import FleetupError, ServerAPIError, UsageError
from fleetup.server import _alerts, _crud
from fleetup.server._analytics import (
    FAILURE_TYPES,
    rates_report,
    recent_events,
    rollout_stage_rows,
    time_to_update_report,
    top_failure_reasons,
    version_counts,
    version_distribution,
)
from fleetup.server._auth import Role, TokenKind, hash_token
from fleetup.server._models import Alert, Device, Event, Rollout, utcnow
from fleetup.server._operations import (
    change_rollout,
    dry_run_rollout,
    explain_rollout,
    report_rollout,
    start_rollout,
)
from fleetup.server._schemas import (
    AlertRuleCreate,
    AlertRuleUpdate,
    RolloutAbort,
    RolloutCreate,
)
from fleetup.server.dashboard._charts import bar_chart, line_chart, nice_ceiling, top_items
from fleetup.server.dashboard._history import (
    device_releases,
    update_rows,
    version_timeline,
)
from fleetup.server.dashboard._render import render
from fleetup.server.dashboard._session import (
    COOKIE,
    LOGIN_COOKIE,
    AdminFormDep,
    PageError,
    PageUser,
    PageUserDep,
    PublisherFormDep,
    ViewerFormDep,
    close_session,
    find_session,
    open_session,
)
from fleetup.server.deps import FleetDep, SessionDep, count_auth_failure, refuse_if_limited
from fleetup.server.routes._params import RowId, no_nul_in_url

__all__ = ["router"]

router = APIRouter(include_in_schema=False, dependencies=[Depends(no_nul_in_url)])

_PAGE = 50
_HISTORY = 500  # events per device page, grouped into updates
# What agents report as their state (the update lifecycle's persisted names).
_DEVICE_STATES = ("idle", "downloading", "verified", "staged", "switched", "health-checking",
                  "committed", "failed", "rolling-back", "rolled-back", "ready")
Text = Annotated[str, Form()]


def _back(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?done={done}", status_code=303)


def _no_rollout() -> PageError:
    return PageError(404, "There is no such rollout.")


# -- signing in -------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    # Only a path on this server, never an open redirect: not "//host", not "https://host",
    # and no backslash (browsers read "/\\host" as "//host").
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 32 for c in target)):
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep,
               next_path: Annotated[str, Query(alias="next")] = "/") -> Response:
    cookie = request.cookies.get(COOKIE)
    if cookie and find_session(session, cookie=cookie):
        return RedirectResponse(_safe_next(next_path), status_code=303)
    return _login_page(request, next_path, status=200)


def _login_page(request: Request, next_path: str, status: int, error: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status, user=None, csrf=token,
                      next=_safe_next(next_path), error=error)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


@router.post("/login")
def login(request: Request, session: SessionDep, fleet: FleetDep, token: Text,
          csrf: Annotated[str, Form()] = "",
          next_path: Annotated[str, Form(alias="next")] = "/") -> Response:
    """Trade an operator token for a session cookie."""
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        return _login_page(request, next_path, 403, "The sign-in form expired: try again.")
    try:
        refuse_if_limited(request)
    except ServerAPIError as e:
        page = _login_page(request, next_path, 429, "Too many failed sign-ins from this "
                           "address: wait a while and try again.")
        page.headers["Retry-After"] = str(round(e.retry_after or 1))
        return page
    token = token.strip()
    row = (_crud.find_operator(session, token_hash=hash_token(token))
           if token.startswith(TokenKind.OPERATOR.value) else None)
    if row is None:
        count_auth_failure(request)
        return _login_page(request, next_path, 401, "Unknown or revoked operator token.")
    cookie, _ = open_session(session, operator_id=row.id, hours=fleet.settings.session_hours)
    response = RedirectResponse(_safe_next(next_path), status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=int(fleet.settings.session_hours * 3600),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, _: ViewerFormDep) -> Response:
    close_session(session, cookie=request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/login?done=signed-out", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- overview ---------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, user: PageUserDep,
             by: Annotated[str, Query(max_length=100)] = "channel") -> Response:
    """Versions (overall, and by channel or by a group tag), live rollouts, update
    rates over 24 h, open alerts."""
    now = utcnow()
    rates, hourly = rates_report(session, now=now, hours=24)
    versions = version_distribution(version_counts(session))
    live = [(row, report_rollout(session, row))
            for row in _crud.list_rollouts(session) if row.state in ("active", "paused")]
    alerts, open_alerts = _alerts.list_alerts(session, state="open", limit=10)
    version_chart = bar_chart(top_items(
        [(f"{v.app} {v.version or '(none)'}", float(v.devices)) for v in versions], 12))
    rates_chart = line_chart(
        [h.start.strftime("%H:00") for h in hourly],
        [("success", "ok", [h.rates.success_rate for h in hourly]),
         ("failure", "bad", [h.rates.failure_rate for h in hourly]),
         ("rollback", "warn", [h.rates.rollback_rate for h in hourly])])
    by_chart = bar_chart(top_items(_versions_by(session, by), 16))
    return render(request, "overview.html", user=user, active="overview", rates=rates,
                  by=by, by_chart=by_chart, group_tags=_group_tags(session),
                  versions=versions, devices=sum(v.devices for v in versions), live=live,
                  alerts=alerts, open_alerts=open_alerts, version_chart=version_chart,
                  rates_chart=rates_chart)


def _versions_by(session: SessionDep, by: str) -> list[tuple[str, float]]:
    """(``channel · version`` or ``tag=value · version``, devices); ``by`` is
    ``channel`` or ``tag:KEY``."""
    column: Any = (Device.tags[by.removeprefix("tag:")].as_string() if by.startswith("tag:")
                   else sa_func.coalesce(Device.channel_override, Device.channel))
    rows = session.execute(select(column, Device.app, Device.version, sa_func.count())
                           .where(Device.removed_at.is_(None))
                           .group_by(column, Device.app, Device.version)
                           .order_by(column, Device.app, Device.version))
    prefix = by.removeprefix("tag:") + "=" if by.startswith("tag:") else ""
    return [(f"{prefix}{key or '(none)'} · {app} {version or '(none)'}", float(count))
            for key, app, version, count in rows]


def _group_tags(session: SessionDep) -> list[str]:
    """Tag keys in use (from a bounded sample of devices), for the "by group" choice."""
    keys: set[str] = set()
    for tags in session.scalars(select(Device.tags).limit(1000)):
        keys.update(k for k in (tags or {}) if isinstance(k, str))
    return sorted(keys)[:50]


# -- rollouts ---------------------------------------------------------------------------


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts(request: Request, session: SessionDep, user: PageUserDep,
             state: str | None = None) -> Response:
    rows = _crud.list_rollouts(session, state=state or None)
    return render(request, "rollouts.html", user=user, active="rollouts", rows=rows,
                  state=state or "", plans={r.id: _crud.plan_of(r) for r in rows})


@router.get("/rollouts/new", response_class=HTMLResponse)
def new_rollout(request: Request, session: SessionDep, user: PageUserDep) -> Response:
    return _new_rollout_page(request, session, user, {})


def _new_rollout_page(request: Request, session: SessionDep, user: PageUser,
                      form: dict[str, str], status: int = 200, **extra: Any) -> Response:
    releases = _crud.list_releases(session)
    return render(request, "rollout_new.html", status, user=user, active="rollouts",
                  form=form, channels=_crud.list_channels(session),
                  apps=sorted({r.app for r in releases}),
                  versions=sorted({(r.app, r.version) for r in releases if not r.yanked}),
                  picked=form.get("release") or f"{form.get('app', '')} {form.get('version', '')}",
                  **extra)


def _rollout_spec(form: dict[str, str]) -> RolloutCreate:
    """The start form as the API's RolloutCreate (percent fields as in the CLI).

    Raises:
        ValueError: a field that is not a number or a TAG=VALUE list.
        ValidationError: what the API would refuse.
    """
    try:
        group = parse_group(form["group"].replace(",", " ").split())
    except UsageError as e:
        raise ValueError(str(e)) from None
    return RolloutCreate.model_validate({
        "app": form["app"], "version": form["version"], "channel": form["channel"],
        "stages": [float(p) for p in form["stages"].split(",") if p.strip()],
        "soak_seconds": int(form["soak_seconds"] or 0),
        "min_reports": int(form["min_reports"] or 0),
        "max_failure_rate": float(form["max_failure_percent"] or 0) / 100, "group": group})


@router.post("/rollouts/new", response_class=HTMLResponse)
def start_or_dry_run(request: Request, session: SessionDep, fleet: FleetDep,
                     user: ViewerFormDep, channel: Text,
                     stages: Text, soak_seconds: Text, min_reports: Text,
                     max_failure_percent: Text,
                     release: Annotated[str, Form(max_length=300)] = "",
                     app: Annotated[str, Form()] = "", version: Annotated[str, Form()] = "",
                     group: Annotated[str, Form()] = "",
                     intent: Annotated[Literal["dry-run", "start"], Form()] = "dry-run"
                     ) -> Response:
    """Dry run (any role: it changes nothing), or start (publisher). The release is
    picked from the pushed ones (``release`` = "APP VERSION"); ``app`` and ``version``
    are still read for forms posted by scripts."""
    if release:
        app, _, version = release.partition(" ")
    form = {"app": app, "version": version, "channel": channel, "stages": stages,
            "soak_seconds": soak_seconds, "min_reports": min_reports,
            "max_failure_percent": max_failure_percent, "group": group}
    try:
        spec = _rollout_spec(form)
    except (ValueError, ValidationError) as e:
        return _new_rollout_page(request, session, user, form, 422, error=_first_error(e))
    try:
        if intent == "start":
            if not user.can(Role.PUBLISHER):
                raise PageError(403, f"Starting a rollout needs the publisher role; you are "
                                     f"signed in as {user.name} ({user.role}).")
            row = start_rollout(session, spec=spec, actor=user.operator.actor)
            fleet.changed()
            return _back(f"/rollouts/{row.id}", "start")
        result = dry_run_rollout(session, spec=spec)
    except ServerAPIError as e:
        return _new_rollout_page(request, session, user, form, e.status_code or 422,
                                 error=str(e))
    return _new_rollout_page(request, session, user, form, dry_run=result, spec=spec)


def _first_error(error: ValueError | ValidationError) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(error)


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout(request: Request, rollout_id: RowId, session: SessionDep, user: PageUserDep
            ) -> Response:
    """Stages with their device counts, failures and their reasons, the controls."""
    row = session.get(Rollout, rollout_id)
    if row is None:
        raise _no_rollout()
    report = report_rollout(session, row)
    scope = [cohort_of(d, report.plan.salt) for d in _crud.rollout_scope(
        session, plan=report.plan, platforms=report.platforms)]
    failures = recent_events(session, since=row.created_at - timedelta(seconds=1),
                             types=FAILURE_TYPES, rollout_id=rollout_id)
    devices, device_count = explain_rollout(session, row, limit=100, offset=0)
    install, _ = time_to_update_report(session, now=utcnow(), hours=24 * 90,
                                       rollout_id=rollout_id)
    progress = _progress_chart(session, row)
    return render(request, "rollout.html", user=user, active="rollouts", row=row,
                  report=report, stages=rollout_stage_rows(report.plan, scope, report.results,
                                                          report.offered_at),
                  failures=list(reversed(failures))[:50],
                  reasons=top_failure_reasons(failures), devices=devices,
                  device_count=device_count, install=install, progress=progress)


_PROGRESS_POINTS = 24
_PROGRESS_DEVICES = 100_000


def _progress_chart(session: SessionDep, row: Rollout) -> Any:
    """Devices per version of the rollout's app and channel, from its start until now
    (or its end), replayed from their install and rollback events."""
    channel = sa_func.coalesce(Device.channel_override, Device.channel)
    found = session.execute(
        select(Device.id, Device.version).where(Device.app == row.app, channel == row.channel,
                                                Device.removed_at.is_(None))
        .limit(_PROGRESS_DEVICES)).tuples()
    devices: dict[str, str | None] = {device_id: version for device_id, version in found}
    start = row.created_at
    end = utcnow() if row.state in ("active", "paused") else max(row.updated_at, start)
    events = list(session.execute(
        select(Event.received_at, Event.device_id, Event.type, Event.version,
               Event.from_version)
        .join(Device, Device.id == Event.device_id)
        .where(Device.app == row.app, channel == row.channel, Event.received_at >= start,
               Event.type.in_(["committed", "rolled-back"]))
        .order_by(Event.received_at).limit(_PROGRESS_DEVICES)).tuples())
    initial = dict(devices)
    for _, device_id, kind, version, from_version in reversed(events):
        if device_id in initial:  # before its first change: what it left, or returned to
            initial[device_id] = version if kind == "rolled-back" else from_version
    span = max((end - start).total_seconds(), 1.0)
    times = [start + timedelta(seconds=span * i / (_PROGRESS_POINTS - 1))
             for i in range(_PROGRESS_POINTS)]
    counts = version_timeline(initial, [(at, d, v or "(none)") for at, d, _, v, _ in events
                                        if d in initial], times)
    palette = tuple(f"v{i}" for i in range(6))
    shown = "%H:%M:%S" if span < 3600 else "%H:%M" if span < 86400 else "%m-%d %H:%M"
    return line_chart([t.strftime(shown) for t in times],
                      [(v, palette[i % len(palette)], [float(c) for c in series])
                       for i, (v, series) in enumerate(counts.items())],
                      y_max=nice_ceiling(float(len(initial))), percent=False, label_every=6)


@router.post("/rollouts/{rollout_id}/{action}")
def control_rollout(rollout_id: RowId, action: Literal["pause", "resume", "advance", "abort"],
                    session: SessionDep, fleet: FleetDep, user: PublisherFormDep,
                    rollback: Annotated[str, Form()] = "",
                    reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    if session.get(Rollout, rollout_id) is None:
        raise _no_rollout()
    abort = RolloutAbort(rollback=rollback == "on", reason=reason) if action == "abort" else None
    change_rollout(session, rollout_id=rollout_id, action=action, actor=user.operator.actor,
                   abort=abort)
    fleet.changed()
    return _back(f"/rollouts/{rollout_id}", action)


# -- releases and devices ---------------------------------------------------------------


@router.get("/releases", response_class=HTMLResponse)
def releases(request: Request, session: SessionDep, fleet: FleetDep, user: PageUserDep,
             app: str | None = None) -> Response:
    rows = _crud.list_releases(session, app=app or None)
    notes: dict[str, tuple[str, str]] = {}
    try:  # notes and yank reasons are in the signed metadata, not in the database
        _, stored = fleet.store.current_releases()
        notes = {s.target_path: (s.facts.notes, s.facts.yank_reason) for s in stored}
    except FleetupError:
        pass
    return render(request, "releases.html", user=user, active="releases", rows=rows,
                  notes=notes, app=app or "")


@router.get("/devices", response_class=HTMLResponse)
def devices(request: Request, session: SessionDep, user: PageUserDep,
            q: str = "", app: str = "", channel: str = "", version: str = "",
            state: str = "", tag: str = "",
            seen_hours: Annotated[float | None, Query(ge=0)] = None,
            unseen_hours: Annotated[float | None, Query(ge=0)] = None,
            page: Annotated[int, Query(ge=1)] = 1) -> Response:
    """Search and filter the inventory."""
    tags = dict(t.partition("=")[::2] for t in tag.replace(",", " ").split() if "=" in t)
    rows, count = _crud.search_devices(
        session, search=q or None, app=app or None, channel=channel or None,
        version=version or None, state=state or None, tags=tags,
        seen_within=timedelta(hours=seen_hours) if seen_hours is not None else None,
        unseen_for=timedelta(hours=unseen_hours) if unseen_hours is not None else None,
        limit=_PAGE, offset=(page - 1) * _PAGE)
    filters = {"q": q, "app": app, "channel": channel, "version": version, "state": state,
               "tag": tag, "seen_hours": "" if seen_hours is None else f"{seen_hours:g}",
               "unseen_hours": "" if unseen_hours is None else f"{unseen_hours:g}"}
    return render(request, "devices.html", user=user, active="devices", rows=rows,
                  count=count, page=page, pages=max(1, -(-count // _PAGE)), filters=filters,
                  query=urlencode({k: v for k, v in filters.items() if v}),
                  versions=version_distribution(version_counts(session)),
                  channels=_crud.list_channels(session), states=_DEVICE_STATES)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device(request: Request, device_id: str, session: SessionDep, user: PageUserDep,
           page: Annotated[int, Query(ge=1)] = 1) -> Response:
    """One device: its releases (running, kept, failed, not offered) and its history,
    one row per update with the update's events folded under it, newest first."""
    row = session.get(Device, device_id)
    if row is None:
        raise PageError(404, "There is no such device.")
    events, count = _crud.device_events(session, device_id=device_id, limit=_HISTORY,
                                        offset=(page - 1) * _HISTORY)
    ours = [r for r in _crud.list_releases(session, app=row.app) if r.platform == row.platform]
    known = device_releases(
        running=row.version, channel=row.channel_override or row.channel,
        releases=[(r.version, list(r.channels), r.yanked)
                  for r in sorted(ours, key=lambda r: r.pushed_at, reverse=True)],
        events=events)
    return render(request, "device.html", user=user, active="devices", row=row,
                  updates=update_rows(events), known=known, count=count, page=page,
                  pages=max(1, -(-count // _HISTORY)))


# -- alerts and audit -------------------------------------------------------------------


@router.get("/alerts", response_class=HTMLResponse)
def alerts(request: Request, session: SessionDep, user: PageUserDep,
           state: Literal["open", "acknowledged", "all"] = "open",
           page: Annotated[int, Query(ge=1)] = 1) -> Response:
    rows, count = _alerts.list_alerts(session, state=state, limit=_PAGE,
                                      offset=(page - 1) * _PAGE)
    return render(request, "alerts.html", user=user, active="alerts", rows=rows,
                  count=count, state=state, page=page, pages=max(1, -(-count // _PAGE)),
                  deliveries=_alerts.deliveries_of(session, alert_ids=[r.id for r in rows]),
                  rules=_alerts.list_rules(session))


@router.post("/alerts/{alert_id}/ack")
def acknowledge(alert_id: RowId, session: SessionDep, user: PublisherFormDep) -> Response:
    if session.get(Alert, alert_id) is None:
        raise PageError(404, "There is no such alert.")
    _alerts.acknowledge_alert(session, alert_id=alert_id, actor=user.operator.actor)
    return _back("/alerts", "ack")


@router.post("/alerts/rules")
def create_rule(session: SessionDep, user: AdminFormDep, name: Text,
                kind: Annotated[Literal["failure_rate", "stuck_devices", "rollback",
                                        "integrity_failure", "running_yanked"], Form()],
                threshold: Annotated[float, Form(ge=0)] = 0.0,
                min_count: Annotated[int, Form(ge=1)] = 1, app: Annotated[str, Form()] = "",
                webhook_url: Annotated[str, Form()] = "",
                webhook_secret: Annotated[str, Form()] = "") -> Response:
    """A rule from the form (a failure-rate threshold is entered in percent)."""
    try:
        spec = AlertRuleCreate(
            name=name, kind=kind,
            threshold=threshold / 100 if kind == "failure_rate" else threshold,
            min_count=min_count, app=app or None, webhook_url=webhook_url or None,
            webhook_secret=webhook_secret)
    except ValidationError as e:
        raise PageError(422, f"The rule is invalid: {_first_error(e)}") from e
    _alerts.create_rule(session, spec=spec, actor=user.operator.actor)
    return _back("/alerts", "rule-created")


@router.post("/alerts/rules/{rule_id}/{action}")
def change_rule(rule_id: RowId, action: Literal["enable", "disable", "delete"],
                session: SessionDep, user: AdminFormDep) -> Response:
    if action == "delete":
        _alerts.delete_rule(session, rule_id=rule_id, actor=user.operator.actor)
        return _back("/alerts", "rule-deleted")
    _alerts.update_rule(session, rule_id=rule_id, actor=user.operator.actor,
                        spec=AlertRuleUpdate(enabled=action == "enable"))
    return _back("/alerts", "rule-updated")


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, session: SessionDep, user: PageUserDep,
          actor: Annotated[str, Query(max_length=200)] = "",
          action: Annotated[str, Query(max_length=60)] = "",
          since_day: Annotated[str, Query(alias="since", max_length=10)] = "",
          until_day: Annotated[str, Query(alias="until", max_length=10)] = "",
          page: Annotated[int, Query(ge=1)] = 1) -> Response:
    """Who changed what, when; open to every operator here (read-only). Filters: the
    actor (a part of it), the action (exact, or a prefix ending in ``.``: ``rollout.``),
    and days (UTC, both ends included; a form sends empty ones)."""
    since, until = _day(since_day), _day(until_day)
    rows, count = _crud.list_audit(
        session, limit=_PAGE, offset=(page - 1) * _PAGE, actor=actor or None,
        action=action or None, since=_day_start(since),
        until=_day_start(until + timedelta(days=1)) if until else None)
    filters = {"actor": actor, "action": action, "since": since.isoformat() if since else "",
               "until": until.isoformat() if until else ""}
    return render(request, "audit.html", user=user, active="audit", rows=rows, count=count,
                  page=page, pages=max(1, -(-count // _PAGE)), filters=filters,
                  query=urlencode({k: v for k, v in filters.items() if v}),
                  actions=_crud.audit_actions(session))


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        raise PageError(422, f"Not a day (YYYY-MM-DD): {text!r}") from None


def _day_start(day: date | None) -> datetime | None:
    return datetime.combine(day, time(), tzinfo=UTC) if day else None
