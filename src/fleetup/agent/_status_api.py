"""The local status API (off by default; loopback only when on).

What the original descriptions call ``/api/updates/...``, for a dashboard or a script on
the device itself. It runs inside ``fleetup agent run`` on the standard library's
threading HTTP server (no web framework on devices); reads are answered directly, and
changes are handed to the daemon, which does them under its lock.

    GET  /api/updates/status            status (as ``agent status --json``)
    POST /api/updates/check             check now; the result
    POST /api/updates/install/{version} install a version on purpose (202, runs async);
                                        the staged version is applied (no network)
    POST /api/updates/apply             switch to the staged release (202; 409 if none)
    POST /api/updates/rollback          roll back (body {"to": "1.0.0"} optional; 202)
    GET  /api/updates/history           past updates and rollbacks
    GET  /api/updates/backups           kept releases (instant rollback targets)

Loopback is not a boundary against a web page in a browser on the device: it can POST
across sites (a "simple" request needs no CORS preflight) and, by DNS rebinding, even
read answers under a name it controls. So every request must name this server in
``Host`` (127.0.0.1, localhost or [::1] with the bound port) and carry no foreign
``Origin``; a change must also be ``Content-Type: application/json`` (which a page
cannot send cross-site without a preflight, never answered here) and carry
``Authorization: Bearer TOKEN``, the token in ``<root>/.fleetup/status-api.token``
(mode 0600, the agent's user only: other local users cannot change anything). An
install is checked before it is accepted: 404 for no such signed release, 409 for one
that cannot be installed here, with the reason.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import threading
from dataclasses import asdict, is_dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fleetup._atomic import atomic_write
from fleetup.agent._daemon import Daemon
from fleetup.errors import FleetupError, UsageError

__all__ = ["StatusApi", "load_token"]

log = logging.getLogger("fleetup.agent")
_PREFIX = "/api/updates/"
_LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_FILE = "status-api.token"  # noqa: S105 - a file name, not a secret


def load_token(state: Path) -> str:
    """The status API's token in ``state/status-api.token``, made if missing.

    A file that others could read or that another user owns is replaced: its token
    may be known to someone it was never meant for.

    Raises:
        StorageError: the file cannot be written.
    """
    path = state / TOKEN_FILE
    try:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() \
                and not info.st_mode & 0o077:
            token = path.read_text().strip()
            if len(token) >= 32:
                return token
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(32)
    state.mkdir(parents=True, exist_ok=True)
    atomic_write(path, token.encode() + b"\n", mode=0o600)
    return token


class StatusApi:
    """Serves the status API for one daemon on 127.0.0.1:``port`` (0 picks a port)."""

    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon = daemon
        token = load_token(daemon.agent.store.layout.state)
        handler = type("Handler", (_Handler,), {"daemon": daemon, "token": token})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        handler.port = self.port  # type: ignore[attr-defined]  # bound one, named in Host
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name="fleetup-status-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("status API on http://127.0.0.1:%d/api/updates/status (token for changes "
                 "in %s)", self.port, self.daemon.agent.store.layout.state / TOKEN_FILE)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    daemon: Daemon
    token: str
    port: int
    server_version = "fleetup-agent"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("status api: " + format, *args)

    def do_GET(self) -> None:
        if not self._local():
            return
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
        elif route == _PREFIX + "flags":  # the fleet server's feature flags, for the app
            self._send(HTTPStatus.OK, agent.store.load_flags())
        else:
            self._error(HTTPStatus.NOT_FOUND, "not-found", f"no such endpoint: {route}")

    def do_POST(self) -> None:
        if not (self._local() and self._may_change()):
            return
        route = self.path.split("?")[0]
        if route == _PREFIX + "check":
            result = self._check()
            if result is not None:
                self._send(HTTPStatus.OK, _plain(result))
        elif route.startswith(_PREFIX + "install/"):
            self._install(route.removeprefix(_PREFIX + "install/"))
        elif route == _PREFIX + "rollback":
            self._rollback()
        elif route == _PREFIX + "apply":
            self._apply()
        else:
            self._error(HTTPStatus.NOT_FOUND, "not-found", f"no such endpoint: {route}")

    # -- who may ask -------------------------------------------------------------------

    def _local(self) -> bool:
        """Answer only requests for this server by name, from no foreign page."""
        allowed = {f"{name}:{self.port}" for name in _LOCAL_NAMES}
        if (self.headers.get("Host") or "").lower() not in allowed:
            self._error(HTTPStatus.MISDIRECTED_REQUEST, "foreign-host",
                        f"this API answers only to {', '.join(sorted(allowed))}")
            return False
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() not in {f"http://{a}" for a in allowed}:
            self._error(HTTPStatus.FORBIDDEN, "foreign-origin",
                        "requests from other sites are refused")
            return False
        return True

    def _may_change(self) -> bool:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "json-only",
                        "changes must be sent as Content-Type: application/json")
            return False
        given = self.headers.get("Authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            self._error(HTTPStatus.UNAUTHORIZED, "token-required",
                        f"changes need Authorization: Bearer <the token in <root>/.fleetup/"
                        f"{TOKEN_FILE}>")
            return False
        return True

    # -- changes -----------------------------------------------------------------------

    def _check(self, version: str | None = None) -> Any:
        """Run a check (for ``version`` if given) in the daemon; the result, or ``None``
        once the error is answered."""
        request = self.daemon.submit("check", version)
        try:
            return request.result.result(timeout=120)
        except UsageError as e:
            status = HTTPStatus.NOT_FOUND if str(e).startswith("no signed release") \
                else HTTPStatus.CONFLICT
            self._error(status, "cannot-install", str(e))
        except FleetupError as e:
            self._error(HTTPStatus.BAD_GATEWAY, "check-failed", str(e))
        except TimeoutError:
            self._error(HTTPStatus.GATEWAY_TIMEOUT, "busy", "the agent is busy; try later")
        return None

    def _install(self, version: str) -> None:
        if not version or "/" in version:
            self._error(HTTPStatus.BAD_REQUEST, "bad-version", "name one version")
            return
        if version == self.daemon.agent.staged_version():  # staged: told to apply it
            self.daemon.submit("apply")
            self._send(HTTPStatus.ACCEPTED, {"accepted": True, "install": version,
                                             "apply": True})
            return
        if self._check(version) is None:  # refused now, with the reason, not later
            return
        self.daemon.submit("update", version)
        self._send(HTTPStatus.ACCEPTED, {"accepted": True, "install": version})

    def _apply(self) -> None:
        staged = self.daemon.agent.staged_version()
        if staged is None:
            self._error(HTTPStatus.CONFLICT, "nothing-staged", "nothing is staged to apply")
            return
        self.daemon.submit("apply")
        self._send(HTTPStatus.ACCEPTED, {"accepted": True, "apply": staged})

    def _rollback(self) -> None:
        to = self._json_body().get("to")
        if to is not None and not isinstance(to, str):
            self._error(HTTPStatus.BAD_REQUEST, "bad-version", "'to' must be a version")
            return
        kept = self.daemon.agent.store.kept_versions()
        if to is not None and to not in kept:
            self._error(HTTPStatus.CONFLICT, "not-kept",
                        f"{to} is not a kept release here (kept: {', '.join(kept) or 'none'})")
            return
        self.daemon.submit("rollback", to)
        self._send(HTTPStatus.ACCEPTED, {"accepted": True, "rollback_to": to})

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
