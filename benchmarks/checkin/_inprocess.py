"""In-process cost per request of the check-in and of the constant-JSON route.

The same app object is called directly through ASGI (no sockets, no load generator,
one process), so the figure is the server's own work per request, steady across runs
on a shared machine: what the wrk figures cannot isolate.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fleetup.server import Settings, create_app
from fleetup.server._app import CHECKIN_PATH


async def _call(app: Any, path: str, method: str, headers: list[tuple[bytes, bytes]],
                body: bytes) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def measure(db_url: str, data: Path, devices_file: Path, requests: int = 20000
            ) -> dict[str, float]:
    """Microseconds per request: ``{"constant": ..., "checkin": ...}``."""
    devices = [line.split() for line in devices_file.read_text().splitlines()]
    app = create_app(Settings(data_dir=data, db_url=db_url, benchmark_routes=True))
    fleet = app.state.fleet

    def checkin(i: int) -> tuple[str, str, list[tuple[bytes, bytes]], bytes]:
        device_id, token, version = devices[i % len(devices)]
        body = (f'{{"device_id":"{device_id}","app":"bench","platform":"linux-x86_64",'
                f'"channel":"stable","tags":{{"site":"s{i % 7}"}},"version":"{version}",'
                f'"state":"idle","kept":["{version}"],"failed":[]}}').encode()
        return CHECKIN_PATH, "POST", [(b"authorization", f"Bearer {token}".encode()),
                                      (b"content-type", b"application/json")], body

    async def run() -> dict[str, float]:
        await fleet.start()
        try:
            result = {}
            for name in ("constant", "checkin"):
                start = time.perf_counter()
                for i in range(requests):
                    args = (checkin(i) if name == "checkin" else
                            ("/api/v1/bench/constant", "GET", [], b""))
                    assert await _call(app, *args) == 200
                result[name] = (time.perf_counter() - start) / requests * 1e6
            return result
        finally:
            await fleet.stop()

    return asyncio.run(run())
