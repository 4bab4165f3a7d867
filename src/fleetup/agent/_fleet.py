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
from fleetup.agent._director import AgentEvent, ReleaseSource
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
        self.http = httpx.Client(base_url=config.server_url + "api/v1/", transport=transport,
                                 timeout=httpx.Timeout(config.download.timeout),
                                 headers={"User-Agent": "fleetup-agent"})
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
            "channel": self.config.channel, "tags": dict(self.config.tags)}, auth=False)
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
        try:
            response = self.http.post(path, json=body, headers=headers)
        except httpx.HTTPError as e:
            raise NetworkError(f"fleet server {self.config.server_url} unreachable: "
                               f"{str(e) or type(e).__name__}") from e
        if response.status_code in (429, 503):
            self.retry_after = _retry_after(response)
            error = HTTPStatusError(f"fleet server busy (HTTP {response.status_code}); "
                                    f"retrying in {self.retry_after or 'a while'}s",
                                    response.status_code)
            raise error
        if response.status_code >= 400:
            code, message = _error_of(response)
            raise ServerAPIError(f"fleet server refused {path}: {message}", code,
                                 response.status_code)
        try:
            body_out = response.json()
        except ValueError as e:
            raise ServerAPIError(f"fleet server sent no JSON for {path}", "bad_response",
                                 response.status_code) from e
        if not isinstance(body_out, dict):
            raise ServerAPIError(f"fleet server sent a malformed answer for {path}",
                                 "bad_response", response.status_code)
        return body_out

    def close(self) -> None:
        self.http.close()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
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
        answer = self.client.checkin({
            "device_id": device.device_id, "app": device.app, "platform": device.platform,
            "channel": device.channel, "tags": dict(self.config.tags),
            "version": device.installed, "state": journal_state.value,
            "kept": list(device.kept), "failed": sorted(device.failed)})
        self._next = float(answer.get("next_check_seconds") or self.config.poll_interval)
        self.rollout_id = rollout_id_of(answer.get("rollout_id"))
        action, version = answer.get("action"), answer.get("version")
        if action not in ("install", "rollback") or not isinstance(version, str):
            return self._unless_yanked(device, source, now,
                                       UpToDate(str(answer.get("reason") or "up to date")))
        releases = source.releases(device.app, device.platform)
        try:
            return check_instruction(releases, device, version, rollback=action == "rollback")
        except UsageError as e:
            log.warning("refusing the fleet server's instruction: %s", e)
            self.sink.emit(AgentEvent("error", version=version, from_version=device.installed,
                                      rollout_id=self.rollout_id, reason=str(e)))
            return UpToDate(str(e))

    def _unless_yanked(self, device: DeviceView, source: ReleaseSource, now: datetime,
                       decision: Decision) -> Decision:
        """If the publisher yanked what runs here, leave it even if the server is silent."""
        if device.installed is None:
            return decision
        releases = source.releases(device.app, device.platform)
        if any(f.version == device.installed and f.yanked for f in releases):
            return choose(releases, device, self.config.policy, now)
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
