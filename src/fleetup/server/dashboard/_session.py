"""Who is using the dashboard: sign-in with an operator token, sessions, CSRF, roles.

Why server-side sessions: the browser keeps only a random session id (cookie
``fleetup_session``: HttpOnly, SameSite=Strict, Secure over HTTPS) and the database
keeps its SHA-256, the operator it belongs to and its CSRF token. Every server process
reads the same table, so no signing key has to be shared between them; signing out
deletes the row; revoking the operator's token ends its sessions at once (each request
checks the token is still valid).

CSRF: every POST form carries the session's token (synchronizer-token pattern),
checked in constant time before anything else; the sign-in form, made before there
is a session, carries a one-time token matched against a short-lived cookie
(double submit). SameSite=Strict is a second, independent line of defence.

Roles are the API's: a viewer sees every page and the forms are hidden or disabled
for them; a POST that needs a higher role is refused with a 403 page whatever the
page showed.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleetup.server._auth import Role, hash_token, role_allows
from fleetup.server._models import DashboardSession, OperatorToken, utcnow
from fleetup.server.deps import Operator, SessionDep

__all__ = ["COOKIE", "LOGIN_COOKIE", "AdminFormDep", "LoginRequired", "PageError",
           "PageUser", "PageUserDep", "PublisherFormDep", "ViewerFormDep", "close_session",
           "find_session", "open_session"]

COOKIE = "fleetup_session"
LOGIN_COOKIE = "fleetup_login"


class LoginRequired(Exception):  # noqa: N818 - a signal that becomes a redirect, not an error
    """No valid session: the browser is sent to the sign-in page (then back to ``next``)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageError(Exception):
    """A refusal shown as an HTML page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class PageUser:
    """The signed-in operator and their session's CSRF token."""

    operator: Operator
    csrf: str

    @property
    def name(self) -> str:
        return self.operator.name

    @property
    def role(self) -> Role:
        return self.operator.role

    def can(self, needed: str) -> bool:
        return role_allows(self.operator.role, Role(needed))


def open_session(session: Session, *, operator_id: int, hours: float) -> tuple[str, str]:
    """Start a session (and drop expired ones); returns (cookie value, CSRF token).
    Commits."""
    now = utcnow()
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
    session.add(DashboardSession(id_hash=hash_token(cookie), operator_id=operator_id,
                                 csrf_token=csrf, created_at=now,
                                 expires_at=now + timedelta(hours=hours)))
    session.commit()
    return cookie, csrf


def find_session(session: Session, *, cookie: str) -> PageUser | None:
    """The operator of a live session whose token is not revoked, or ``None``."""
    row = session.execute(
        select(DashboardSession.csrf_token, OperatorToken.id, OperatorToken.name,
               OperatorToken.role)
        .join(OperatorToken, OperatorToken.id == DashboardSession.operator_id)
        .where(DashboardSession.id_hash == hash_token(cookie),
               DashboardSession.expires_at > utcnow(), OperatorToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return PageUser(Operator(row[1], row[2], Role(row[3])), row[0])


def close_session(session: Session, *, cookie: str) -> None:
    """Sign out: the session row is deleted. Commits."""
    session.execute(delete(DashboardSession).where(
        DashboardSession.id_hash == hash_token(cookie)))
    session.commit()


def page_user(request: Request, session: SessionDep) -> PageUser:
    """The signed-in operator, or a redirect to the sign-in page."""
    cookie = request.cookies.get(COOKIE)
    user = find_session(session, cookie=cookie) if cookie else None
    if user is None:
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(request.url.path + query if request.method == "GET" else "/")
    return user


PageUserDep = Annotated[PageUser, Depends(page_user)]


async def _csrf_checked(request: Request, user: PageUserDep) -> PageUser:
    form = await request.form()
    token = form.get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(),
                                                             user.csrf.encode()):
        raise PageError(403, "The form has expired or did not come from this dashboard: "
                             "reload the page and try again.")
    return user


def _form_user(needed: Role) -> Callable[[PageUser], Awaitable[PageUser]]:
    async def require(user: Annotated[PageUser, Depends(_csrf_checked)]) -> PageUser:
        if not user.can(needed):
            raise PageError(403, f"This needs the {needed} role; you are signed in as "
                                 f"{user.name} ({user.role}).")
        return user

    return require


ViewerFormDep = Annotated[PageUser, Depends(_form_user(Role.VIEWER))]
PublisherFormDep = Annotated[PageUser, Depends(_form_user(Role.PUBLISHER))]
AdminFormDep = Annotated[PageUser, Depends(_form_user(Role.ADMIN))]
