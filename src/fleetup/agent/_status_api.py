"""The local status API (off by default; loopback only when on).

What the original descriptions call ``/api/updates/...``, for a dashboard or a script on
the device itself. It runs inside ``fleetup agent run`` on the standard library's
threading HTTP server (no web framework on devices); reads are answered directly, and
changes are handed to the daemon, which does them under its lock.

    GET  /api/updates/status            status (as ``agent status --json``)
    POST /api/updates/check             check now; the result
    POST /api/updates/install/{version} install a version on purpose (202, runs async)
    POST /api/updates/rollback          roll back (body {"to": "1.0.0"} optional; 202)
    GET  /api/updates/history           past updates and rollbacks
    GET  /api/updates/backups           kept releases (instant rollback targets)
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, is_dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetup.agent._daemon import Daemon
from fleetup.errors import FleetupError

__all__ = ["StatusApi"]

log = logging.getLogger("fleetup.agent")
_PREFIX = "/api/updates/"


class StatusApi:
    """Serves the status API for one daemon on 127.0.0.1:``port`` (0 picks a port)."""

    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon = daemon
        handler = type("Handler", (_Handler,), {"daemon": daemon})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name="fleetup-status-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("status API on http://127.0.0.1:%d/api/updates/status", self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    daemon: Daemon
    server_version = "fleetup-agent"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("status api: " + format, *args)

    def do_GET(self) -> None:
        agent = self.daemon.agent
        route = self.path.split("?")[0]
        if route == _PREFIX + "status":
            body = agent.status()
            body["daemon"] = {"busy": self.daemon._busy(), "last_error": self.daemon.last_error}
            self._send(HTTPStatus.OK, body)
        elif route == _PREFIX + "history":
            self._send(HTTPStatus.OK, agent.history())
        elif route == _PREFIX + "backups":
            self._send(HTTPStatus.OK, _backups(self.daemon))
        else:
            self._error(HTTPStatus.NOT_FOUND, "not-found", f"no such endpoint: {route}")

    def do_POST(self) -> None:
        route = self.path.split("?")[0]
        if route == _PREFIX + "check":
            request = self.daemon.submit("check")
            try:
                result = request.result.result(timeout=120)
            except FleetupError as e:
                self._error(HTTPStatus.BAD_GATEWAY, "check-failed", str(e))
                return
            except TimeoutError:
                self._error(HTTPStatus.GATEWAY_TIMEOUT, "busy", "the agent is busy; try later")
                return
            self._send(HTTPStatus.OK, _plain(result))
        elif route.startswith(_PREFIX + "install/"):
            version = route.removeprefix(_PREFIX + "install/")
            if not version or "/" in version:
                self._error(HTTPStatus.BAD_REQUEST, "bad-version", "name one version")
                return
            self.daemon.submit("update", version)
            self._send(HTTPStatus.ACCEPTED, {"accepted": True, "install": version})
        elif route == _PREFIX + "rollback":
            to = self._json_body().get("to")
            if to is not None and not isinstance(to, str):
                self._error(HTTPStatus.BAD_REQUEST, "bad-version", "'to' must be a version")
                return
            self.daemon.submit("rollback", to)
            self._send(HTTPStatus.ACCEPTED, {"accepted": True, "rollback_to": to})
        else:
            self._error(HTTPStatus.NOT_FOUND, "not-found", f"no such endpoint: {route}")

    def _json_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(min(length, 1 << 16)))
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _send(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _backups(daemon: Daemon) -> list[dict[str, Any]]:
    store = daemon.agent.store
    installed = store.installed_version()
    rows = []
    for version in store.kept_versions():
        try:
            _, facts = store.load_manifest(version)
        except FleetupError:
            continue
        rows.append({"version": version, "current": version == installed,
                     "type": facts.update_type.value, "notes": facts.notes,
                     "published": facts.published, "size": facts.tree_size})
    return rows
