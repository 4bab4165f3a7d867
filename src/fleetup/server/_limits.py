"""Request body caps per route, enforced before anything reads or authenticates a body.

Without a cap, an unauthenticated 100 MB body to ``/api/v1/devices/enroll`` was read
whole (+169 MB resident; five at once, 1 GB) before the enrollment token was looked at.
:class:`BodyLimits` sits in front of the app, check-in fast path included, and:

1. refuses a declared ``Content-Length`` over the route's cap with 413 at once, before
   a byte of the body is read (nothing behind it runs);
2. counts a body sent without one (chunked) as it is read, and at the first byte over
   the cap answers 413 and tells the app the client went away, so at most one chunk
   beyond the cap is ever held.

Starlette's own ``RequestBodyLimitMiddleware`` does the second only, answers in plain
text and only once the app reads; this one answers in the API's error shape, per route.
uvicorn stops reading the socket while a body waits unread, so refusing early also
bounds what the server buffers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetup.server._settings import Settings

__all__ = ["BodyLimits", "body_caps"]


def body_caps(settings: Settings, api_prefix: str, checkin_cap: int) -> dict[str, int]:
    """The cap of each route with its own (bytes); every other route has
    ``settings.max_body_bytes``."""
    return {f"{api_prefix}/devices/enroll": settings.max_enroll_bytes,
            f"{api_prefix}/devices/checkin": checkin_cap,
            f"{api_prefix}/devices/events": settings.max_events_bytes,
            f"{api_prefix}/releases": settings.max_push_bytes}


class BodyLimits:
    """ASGI middleware: 413 ``too_large`` for a body over its route's cap."""

    def __init__(self, app: ASGIApp, caps: Mapping[str, int], default: int) -> None:
        self.app = app
        self.caps = dict(caps)
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.caps.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await _too_large(send, cap)
            return
        await self.app(scope, *_bounded(receive, send, cap))


def _bounded(receive: Receive, send: Send, cap: int) -> tuple[Receive, Send]:
    """``receive`` that stops at ``cap`` bytes (answering 413 itself), and ``send`` that
    drops whatever the app answers after that."""
    received = 0
    refused = started = False

    async def bounded_receive() -> Message:
        nonlocal received, refused
        if refused:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                refused = True
                if not started:
                    await _too_large(send, cap)
                return {"type": "http.disconnect"}
        return message

    async def guarded_send(message: Message) -> None:
        nonlocal started
        if refused:
            return
        started = started or message["type"] == "http.response.start"
        await send(message)

    return bounded_receive, guarded_send


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, cap: int) -> None:
    body = json.dumps({"error": {"code": "too_large", "message":
                                 f"the request body is over this route's {cap} bytes"}}
                      ).encode()
    # Connection: close, since the rest of the body is never read.
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
