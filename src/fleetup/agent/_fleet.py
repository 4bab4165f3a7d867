"""Fleet mode: enroll once, check in, do what the server says, report every event.

The server chooses among signed releases, nothing more: its answer is checked against
the TUF-verified facts (:func:`~fleetup.agent._choice.check_instruction`), so a server
that was taken over can delay updates but cannot make this device install anything the
publisher did not sign, or downgrade to a release that is not kept here (a downgrade
needs the publisher's yank). A yanked installed release is left as in static mode.

Events are written to ``.fleetup/events/`` before anything is sent and removed only once
the server has acknowledged their ids (accepted or already known): none is lost while
the server is down, and none is counted twice when a send is retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from fleetup._atomic import atomic_write
from fleetup._protocol import RolloutId, rollout_id_of
from fleetup.agent._choice import (
    Decision,
    DeviceView,
    UpToDate,
    check_instruction,
    choose,
)
from fleetup.agent._config import AgentConfig
from fleetup.agent._director import RUNNING_YANKED, AgentEvent, ReleaseSource
from fleetup.agent._flags import clean_flags
from fleetup.agent._store import DeviceStore
from fleetup.errors import (
    ConfigError,
    FleetupError,
    HTTPStatusError,
    NetworkError,
    ServerAPIError,
    UsageError,
)

__all__ = ["FleetClient", "FleetDirector", "FleetEventSink", "fleet_parts"]

log = logging.getLogger("fleetup.agent")

_BATCH = 200


class FleetClient:
    """The fleet protocol over httpx: enroll, check in, send events.

    Raises (every method):
        NetworkError: the server could not be reached (retryable).
        HTTPStatusError: 429/503 with ``retry_after`` set from ``Retry-After``.
        ServerAPIError: the server refused the request (its ``code`` and message).
    """

    def __init__(self, config: AgentConfig, store: DeviceStore,
                 transport: httpx.BaseTransport | None = None) -> None:
        if config.server_url is None:
            raise ConfigError("fleet mode needs server_url")
        self.config = config
        self.store = store
        # No idle connections: each exchange connects anew, so _Deadline sees its socket
        # (a check-in every few minutes gains nothing from keep-alive). No redirects are
        # followed; each request still passes the [download] host policy.
        hosts = config.download.hosts
        self.http = httpx.Client(base_url=config.server_url + "api/v1/", transport=transport,
                                 timeout=httpx.Timeout(min(config.download.timeout,
                                                           config.fleet.deadline)),
                                 limits=httpx.Limits(max_keepalive_connections=0),
                                 headers={"User-Agent": "fleetup-agent"},
                                 event_hooks={"request": [lambda r: hosts.check(str(r.url))]}
                                 if hosts.active else None)
        self.retry_after: float | None = None

    @property
    def _token_file(self) -> Path:
        return self.store.layout.state / "fleet.json"

    def device_id(self) -> str:
        return self.config.device_id or self.store.device_id()

    def token(self) -> str:
        """This device's token, enrolling first if there is none."""
        try:
            saved = json.loads(self._token_file.read_text())
            if saved.get("server_url") == self.config.server_url and saved.get("device_token"):
                return str(saved["device_token"])
        except (FileNotFoundError, ValueError):
            pass
        return self.enroll()

    def enroll(self) -> str:
        if not self.config.enrollment_token:
            raise ConfigError("fleet mode needs enrollment_token to enroll this device")
        answer = self._post("devices/enroll", {
            "enrollment_token": self.config.enrollment_token, "device_id": self.device_id(),
            "app": self.config.app, "platform": self.config.platform,
            "channel": self.store.channel_override() or self.config.channel,
            "tags": dict(self.config.tags)}, auth=False)
        token = str(answer["device_token"])
        self.store.ensure()
        atomic_write(self._token_file, json.dumps({
            "server_url": self.config.server_url, "device_id": self.device_id(),
            "device_token": token}).encode(), mode=0o600)
        log.info("enrolled with %s as %s", self.config.server_url, self.device_id())
        return token

    def checkin(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._post("devices/checkin", body)
        except ServerAPIError as e:
            if e.status_code != 401 or not self.config.enrollment_token:
                raise
            log.warning("the server refused this device's token; enrolling again")
            with contextlib.suppress(FileNotFoundError):
                self._token_file.unlink()
            return self._post("devices/checkin", body)

    def send_events(self, events: list[dict[str, Any]]) -> set[str]:
        """Send events; returns the ids the server now holds (new or already known)."""
        answer = self._post("devices/events", {"events": events})
        return {str(i) for i in answer.get("accepted", [])} | {
            str(i) for i in answer.get("duplicates", [])}

    def _post(self, path: str, body: Mapping[str, Any], auth: bool = True) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token()}"} if auth else {}
        status, data = self._exchange(path, body, headers)
        if status in (429, 503):
            self.retry_after = _retry_after_value(data.headers.get("Retry-After"))
            raise HTTPStatusError(f"fleet server busy (HTTP {status}); "
                                  f"retrying in {self.retry_after or 'a while'}s", status)
        if status >= 400:
            code, message = _error_of(data)
            raise ServerAPIError(f"fleet server refused {path}: {message}", code, status)
        try:
            body_out = data.json()
        except ValueError as e:
            raise ServerAPIError(f"fleet server sent no JSON for {path}", "bad_response",
                                 status) from e
        if not isinstance(body_out, dict):
            raise ServerAPIError(f"fleet server sent a malformed answer for {path}",
                                 "bad_response", status)
        return body_out

    def _exchange(self, path: str, body: Mapping[str, Any], headers: Mapping[str, str]
                  ) -> tuple[int, httpx.Response]:
        """POST and read the whole reply within ``[fleet] deadline`` and ``max_reply``.

        Per-read timeouts alone let a server trickle a byte every few seconds forever;
        the :class:`_Deadline` cuts the connection wherever the exchange is.

        Raises:
            NetworkError: unreachable, or no whole answer before the deadline.
            ServerAPIError: the answer is larger than ``max_reply`` (not read further).
        """
        bounds = self.config.fleet
        with _Deadline(bounds.deadline) as deadline:
            try:
                with self.http.stream("POST", path, json=body, headers=headers,
                                      extensions={"trace": deadline.trace}) as response:
                    content = _read_capped(response, bounds.max_reply, path)
            except httpx.HTTPError as e:
                if deadline.expired:
                    raise NetworkError(f"fleet server {self.config.server_url} gave no whole "
                                       f"answer to {path} within {bounds.deadline:g} s") from e
                raise NetworkError(f"fleet server {self.config.server_url} unreachable: "
                                   f"{str(e) or type(e).__name__}") from e
        return response.status_code, httpx.Response(
            response.status_code, headers=response.headers, content=content)

    def close(self) -> None:
        self.http.close()


def _retry_after_value(value: str | None) -> float | None:
    try:
        return max(1.0, float(value)) if value else None
    except ValueError:
        return None


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}", f"HTTP {response.status_code}"


def _read_capped(response: httpx.Response, cap: int, path: str) -> bytes:
    """The reply's body, refused before it grows past ``cap`` bytes.

    Raises:
        ServerAPIError: the declared or actual length is over ``cap``.
    """
    too_big = ServerAPIError(f"fleet server's answer to {path} is larger than {cap} bytes: "
                             "refused", "reply_too_large", response.status_code)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


class _Deadline:
    """Cuts one HTTP exchange off at its deadline, wherever it is.

    httpx bounds each read, not the whole: a server sending a byte every few seconds
    never trips a read timeout. httpx's ``trace`` extension hands over the socket when it
    connects; at the deadline a timer shuts it down, so the blocked read returns and
    httpx raises. The client keeps no idle connections (see :class:`FleetClient`), so
    every exchange connects and is watched.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def trace(self, name: str, info: Mapping[str, Any]) -> None:
        if name != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)
                if self.expired:
                    _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class FleetDirector:
    """Asks the fleet server what to do, and holds it to the signed facts."""

    def __init__(self, client: FleetClient, config: AgentConfig, sink: FleetEventSink) -> None:
        self.client = client
        self.config = config
        self.sink = sink
        self.rollout_id: RolloutId | None = None
        self._next: float | None = None

    def decide(self, device: DeviceView, source: ReleaseSource, now: datetime,
               wanted: str | None = None) -> Decision:
        if wanted is not None:  # an operator on the device insists: as in static mode
            return choose(source.releases(device.app, device.platform), device,
                          self.config.policy, now, wanted)
        self.sink.flush()  # the server should know what happened before it decides
        journal_state = self.client.store.load_journal().state
        # The server's interval wins while it answers (it spreads the fleet's load); if
        # this check-in fails, the agent's own poll_interval applies until it answers.
        self._next = None
        answer = self.client.checkin({
            "device_id": device.device_id, "app": device.app, "platform": device.platform,
            "channel": device.channel, "tags": dict(self.config.tags),
            "version": device.installed, "state": journal_state.value,
            "kept": list(device.kept), "failed": sorted(device.failed)})
        self._next = float(answer.get("next_check_seconds") or self.config.poll_interval)
        self._keep_flags(answer.get("flags"))
        self.rollout_id = rollout_id_of(answer.get("rollout_id"))
        action, version = answer.get("action"), answer.get("version")
        if action not in ("install", "rollback") or not isinstance(version, str):
            return self._unless_yanked(device, source, now,
                                       UpToDate(str(answer.get("reason") or "up to date")))
        releases = source.releases(device.app, device.platform)
        try:
            return check_instruction(releases, device, version, action == "rollback",
                                     self.config.policy, now)
        except UsageError as e:
            log.warning("refusing the fleet server's instruction: %s", e)
            self.sink.emit(AgentEvent("error", version=version, from_version=device.installed,
                                      rollout_id=self.rollout_id, reason=str(e)))
            return self._unless_yanked(device, source, now, UpToDate(str(e)))

    def _keep_flags(self, value: object) -> None:
        """Hand the server's feature flags to the app (when they changed); they play no
        part in what is installed."""
        flags = clean_flags(value)
        if flags is None:
            if value is not None:
                log.warning("ignoring malformed feature flags from the fleet server")
            return
        if flags != self.client.store.load_flags():
            self.client.store.save_flags(flags)

    def _unless_yanked(self, device: DeviceView, source: ReleaseSource, now: datetime,
                       decision: Decision) -> Decision:
        """If the publisher yanked what runs here, leave it even if the server is silent;
        if there is nowhere to go, tell the server (``running-yanked``) so it can alert."""
        if device.installed is None:
            return decision
        releases = source.releases(device.app, device.platform)
        if not any(f.version == device.installed and f.yanked for f in releases):
            return decision
        decision = choose(releases, device, self.config.policy, now)
        if decision.running_yanked and not self.client.store.load_status().get(
                "running_yanked"):  # once, not every check-in
            self.sink.emit(AgentEvent(RUNNING_YANKED, version=device.installed,
                                      reason=decision.running_yanked))
        return decision

    def next_check(self, default: float) -> float:
        if self.client.retry_after:
            wait, self.client.retry_after = self.client.retry_after, None
            return wait
        return self._next or default


class FleetEventSink:
    """Queues events on disk and sends them when the server is reachable."""

    def __init__(self, client: FleetClient, store: DeviceStore) -> None:
        self.client = client
        self.store = store

    @property
    def _dir(self) -> Path:
        return self.store.layout.events

    def emit(self, event: AgentEvent) -> None:
        body = event.to_dict()
        body["rollout_id"] = rollout_id_of(body.get("rollout_id"))
        body["reason"] = str(body.get("reason") or "")[:1000]
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            name = f"{event.at.replace(':', '').replace('+', 'Z')}-{event.id}.json"
            atomic_write(self._dir / name, json.dumps(body).encode(), mode=0o600)
        except FleetupError as e:  # an event must never break the update itself
            log.error("could not queue event %s: %s", event.type, e)
        log.info("event %s %s", event.type, event.version or "")

    def pending(self) -> list[Path]:
        try:
            return sorted(self._dir.glob("*.json"))
        except OSError:
            return []

    def flush(self) -> None:
        """Send queued events, oldest first; keep whatever is not acknowledged."""
        files = self.pending()
        for start in range(0, len(files), _BATCH):
            queued: list[tuple[Path, dict[str, Any]]] = []
            for path in files[start:start + _BATCH]:
                try:
                    queued.append((path, json.loads(path.read_text())))
                except (OSError, ValueError):
                    log.warning("dropping unreadable queued event %s", path.name)
                    with contextlib.suppress(OSError):
                        path.unlink()
            if not queued:
                continue
            try:
                acknowledged = self.client.send_events([event for _, event in queued])
            except FleetupError as e:
                log.info("events stay queued (%d): %s", len(files) - start, e)
                return
            for path, event in queued:
                if str(event.get("id")) in acknowledged:
                    with contextlib.suppress(OSError):
                        os.unlink(path)


def fleet_parts(config: AgentConfig, transport: httpx.BaseTransport | None = None
                ) -> tuple[FleetDirector, FleetEventSink]:
    """The director and event sink of fleet mode for this config."""
    store = DeviceStore(config.root)
    client = FleetClient(config, store, transport)
    sink = FleetEventSink(client, store)
    return FleetDirector(client, config, sink), sink
