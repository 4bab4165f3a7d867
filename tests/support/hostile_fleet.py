"""A stolen fleet server on loopback: real HTTP, crafted answers, for a real agent.

It serves the publisher's signed repository under ``/repo/`` (a stolen server holds it,
and its online keys, but not the offline targets key) and answers the device protocol
with whatever the test sets: a check-in ``answer``, or a ``reply`` mode that trickles
its bytes or never stops sending. The standard library's threading server, so a test
needs no extra process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["HostileFleet", "hostile_fleet"]


class HostileFleet:
    """What the server answers, and what it saw (``sent``: bytes of the last reply)."""

    def __init__(self, public: Path) -> None:
        self.public = public
        self.answer: dict[str, Any] = {"action": "none"}
        self.reply = "json"          # "json", "trickle" or "flood"
        self.trickle_every = 0.2     # seconds between bytes of a trickled reply
        self.trickle_for = 20.0      # then the trickle ends (so old code cannot hang a test)
        self.flood = 64 << 20        # bytes of a flood, sent without Content-Length
        self.sent = 0
        self.events: list[dict[str, Any]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class _Handler(BaseHTTPRequestHandler):
    fleet: HostileFleet
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        path = self.path.split("?")[0].removeprefix("/repo/")
        file = (self.fleet.public / path).resolve()
        if not file.is_relative_to(self.fleet.public.resolve()) or not file.is_file():
            self._send(404, b"{}")
            return
        self._send(200, file.read_bytes())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path.endswith("/devices/enroll"):
            self._send(201, json.dumps({"device_token": "stolen"}).encode())
        elif self.path.endswith("/devices/events"):
            self.fleet.events += body.get("events", [])
            ids = [e.get("id") for e in body.get("events", [])]
            self._send(200, json.dumps({"accepted": ids, "duplicates": []}).encode())
        elif self.fleet.reply == "trickle":
            self._trickle(json.dumps(self.fleet.answer).encode())
        elif self.fleet.reply == "flood":
            self._flood()
        else:
            self._send(200, json.dumps(self.fleet.answer).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self, data: bytes) -> None:
        """The whole reply, status line first, one byte at a time."""
        whole = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data)) + data
        end = time.monotonic() + self.fleet.trickle_for
        try:
            for i in range(len(whole)):
                if time.monotonic() > end:
                    self.wfile.write(whole[i:])
                    break
                self.wfile.write(whole[i:i + 1])
                self.wfile.flush()
                time.sleep(self.fleet.trickle_every)
        except OSError:
            pass
        self.close_connection = True

    def _flood(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b" " * 65536
        self.fleet.sent = 0
        try:
            while self.fleet.sent < self.fleet.flood:
                self.wfile.write(chunk)
                self.fleet.sent += len(chunk)
        except OSError:
            pass
        self.close_connection = True


@contextmanager
def hostile_fleet(public: Path) -> Iterator[HostileFleet]:
    """Run a :class:`HostileFleet` over ``public`` (metadata/, targets/) until exit."""
    fleet = HostileFleet(public)
    handler = type("Handler", (_Handler,), {"fleet": fleet})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fleet.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fleet
    finally:
        server.shutdown()
        server.server_close()
