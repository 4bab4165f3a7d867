"""The check-in hot path as a plain ASGI endpoint, in front of FastAPI.

Every device calls ``POST /api/v1/devices/checkin`` every few minutes, so this one
route sets the fleet size a server can carry. Measured on FastAPI, most of its cost
was the framework's per-request machinery (dependency solving, body handling,
response validation) rather than the check-in itself. So this middleware answers it
directly, with the same contract as the FastAPI route (which stays declared, with its
dependencies, for the OpenAPI document, the auth tests, and as the path used when
``FLEETUP_SERVER_FAST_CHECKIN=0``):

1. shed load: 503 + ``Retry-After`` beyond the in-flight / pending-update bounds;
2. authenticate the device token (cached; see ``_fleet``), after the client address's
   limit on failed authentication (429 + ``Retry-After``, ``_ratelimit``);
3. parse and validate the body with pydantic (``model_validate_json``);
4. answer from :meth:`Fleet.checkin`.

Errors have the API's shape and codes (``unauthorized``, ``invalid_request``, ...).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetup.errors import ServerAPIError
from fleetup.server._fleet import Fleet
from fleetup.server._ratelimit import FailureLimiter, client_key
from fleetup.server._schemas import CheckinRequest

__all__ = ["MAX_BODY", "CheckinEndpoint"]

MAX_BODY = 64 << 10
_JSON = [(b"content-type", b"application/json")]


class CheckinEndpoint:
    """ASGI middleware serving ``POST path`` itself and passing everything else on."""

    def __init__(self, app: ASGIApp, fleet: Fleet, path: str, fast: bool = True,
                 limiter: FailureLimiter | None = None) -> None:
        self.app = app
        self.fleet = fleet
        self.path = path
        self.fast = fast
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        fleet = self.fleet
        if fleet.should_shed():
            retry = str(fleet.settings.retry_after_seconds).encode()
            await _send(send, 503, _error("overloaded", "the server is shedding load; retry "
                                          "later"), [(b"retry-after", retry)])
            return
        fleet.inflight += 1
        try:
            if self.fast and scope["method"] == "POST":
                await self._answer(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            fleet.inflight -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _bearer(scope)
        if token and await self._limited(scope, send):
            return
        device = await self.fleet.device_for(token) if token else None
        if device is None:
            if token and self.limiter is not None:
                self.limiter.failed(_client(scope))
            message = ("unknown device token: enroll again" if token else
                       "this endpoint needs a device token (Authorization: Bearer ...)")
            await _send(send, 401, _error("unauthorized", message),
                        [(b"www-authenticate", b"Bearer")])
            return
        body = await _read_body(receive)
        if body is None:
            await _send(send, 413, _error("too_large", f"a check-in is at most {MAX_BODY} "
                                                       "bytes"))
            return
        try:
            request = CheckinRequest.model_validate_json(body)
            answer = self.fleet.checkin(device, request)
        except ValidationError as e:
            await _send(send, 422, _validation_error(e))
            return
        except ServerAPIError as e:
            await _send(send, e.status_code, _error(e.code, str(e)))
            return
        await _send(send, 200, answer.__pydantic_serializer__.to_json(answer))

    async def _limited(self, scope: Scope, send: Send) -> bool:
        """Answer 429 if this client failed to authenticate too often."""
        wait = None if self.limiter is None else self.limiter.retry_after(_client(scope))
        if wait is None:
            return False
        await _send(send, 429, _error("rate_limited", "too many failed sign-ins from this "
                                      "address; try again later"),
                    [(b"retry-after", str(max(1, round(wait))).encode())])
        return True


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client_key(client[0] if client else None)


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(code: str, message: str, **extra: Any) -> bytes:
    from json import dumps

    return dumps({"error": {"code": code, "message": message, **extra}}).encode()


def _validation_error(error: ValidationError) -> bytes:
    problems = [{"loc": ["body", *(str(p) for p in e["loc"])], "msg": e["msg"]}
                for e in error.errors(include_url=False, include_context=False,
                                      include_input=False)]
    first = problems[0] if problems else {"loc": ["body"], "msg": "invalid request"}
    return _error("invalid_request", f"{'.'.join(first['loc'])}: {first['msg']}",
                  problems=problems)


async def _send(send: Send, status: int, body: bytes,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
