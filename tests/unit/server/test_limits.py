"""Body caps per route, through the ASGI seam: a declared length over the cap is refused
unread; a streamed body is cut at the cap and the app's own answer is dropped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from fleetup.server._limits import BodyLimits


class ReadingApp:
    """Reads the whole body, then answers 200 with its size."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def run(path: str, chunks: list[bytes], length: int | None = None
        ) -> tuple[ReadingApp, list[Message], int]:
    app = ReadingApp()
    limits = BodyLimits(app, caps={"/small": 10}, default=100)
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope: dict[str, Any] = {"type": "http", "path": path, "headers": headers}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks)]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(limits(scope, receive, send))
    return app, sent, len(pending)


def test_a_declared_length_over_the_cap_is_refused_before_the_app_runs() -> None:
    app, sent, unread = run("/small", [b"x" * 11], length=11)
    assert not app.called
    assert unread == 1
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "too_large"


def test_a_streamed_body_is_cut_at_the_cap_and_the_apps_answer_dropped() -> None:
    app, sent, unread = run("/small", [b"x" * 6, b"x" * 6, b"x" * 6])
    assert app.called
    assert unread == 1
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]


def test_bodies_within_the_cap_reach_the_app_and_other_routes_have_the_default() -> None:
    assert run("/small", [b"x" * 5, b"x" * 5])[1][1]["body"] == b"10"
    assert run("/other", [b"x" * 60, b"x" * 40], length=100)[1][1]["body"] == b"100"
    assert run("/other", [b"x" * 101])[1][0]["status"] == 413
