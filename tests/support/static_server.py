"""A real static HTTP host for tests: Starlette's StaticFiles under uvicorn, in its own
process, so tests can SIGKILL it mid-download like a dead CDN node.

Run: python -m tests.support.static_server DIR PORT_FILE [--rate B/S] [--log FILE]

Starlette's FileResponse answers Range requests, as S3, nginx and CDNs do. ``--rate``
throttles response bodies so a test can kill the server part-way through a download.
The chosen port is written to PORT_FILE once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AccessLog:
    """ASGI middleware appending one JSON line per request: path, Range header, status."""

    def __init__(self, app: ASGIApp, path: Path) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        record: dict[str, Any] = {"path": scope["path"], "range": headers.get("range"),
                                  "bytes": 0}

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            elif message["type"] == "http.response.body":
                record["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Throttle:
    """ASGI middleware sending response bodies at most ``rate`` bytes per second."""

    def __init__(self, app: ASGIApp, rate: int) -> None:
        self.app = app
        self.rate = rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def slow_send(message: Message) -> None:
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if not body:
                await send(message)
                return
            step = max(1, self.rate // 20)
            more = message.get("more_body", False)
            for start in range(0, len(body), step):
                last = start + step >= len(body)
                await send({"type": "http.response.body", "body": body[start:start + step],
                            "more_body": more or not last})
                await asyncio.sleep(step / self.rate)

        await self.app(scope, receive, slow_send)


def build_app(directory: Path, rate: int | None, log: Path | None = None) -> Any:
    app: Any = Starlette(routes=[Mount("/", app=StaticFiles(directory=directory))])
    app = Throttle(app, rate) if rate else app
    return AccessLog(app, log) if log else app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--rate", type=int, default=None)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(args.port_file.read_text() or 0)
               if args.port_file.exists() else 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(build_app(args.directory, args.rate, args.log), log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        tmp.replace(args.port_file)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
