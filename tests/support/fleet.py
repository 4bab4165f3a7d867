"""Fleet-server test helpers: real ``fleetup server`` processes and simulated devices.

``FleetServer`` runs ``python -m fleetup server`` on a free loopback port with fast
background intervals, and can be SIGKILLed and restarted on the same port and data.
``SimDevice`` speaks the fleet protocol (docs/internals.md) with plain httpx calls, as
the agent will. ``publish`` adds a tiny release to a publisher repository.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from fleetup.repository import ReleaseRequest, add_release

__all__ = ["FAST", "PLATFORM", "CliResult", "FleetServer", "SimDevice", "cli", "free_port",
           "publish", "wait_for"]

PLATFORM = "linux-x86_64"
ROOT = Path(__file__).resolve().parents[2]

# Background work every few hundred milliseconds, so tests wait little.
FAST = {
    "FLEETUP_SERVER_FLUSH_SECONDS": "0.2",
    "FLEETUP_SERVER_CACHE_SECONDS": "0.3",
    "FLEETUP_SERVER_ROLLOUT_TICK_SECONDS": "0.3",
    "FLEETUP_SERVER_CHECKIN_INTERVAL": "60",
    # Tests send many refused tokens from 127.0.0.1 on purpose; the attack suite
    # (tests/security/test_server_requests.py) sets a low limit of its own.
    "FLEETUP_SERVER_AUTH_FAILURE_BURST": "1000000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
             ) -> Any:
    """Poll until ``condition()`` is truthy; returns its value (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, token: str | None = None, check: bool = True,
        subprocess_: bool = False) -> CliResult:
    """Run ``fleetup ARGS`` in this process (or as a real subprocess with ``subprocess_``),
    with ``FLEETUP_TOKEN`` set to ``token``."""
    if subprocess_:
        env = {**os.environ, "FLEETUP_TOKEN": token or ""}
        done = subprocess.run([sys.executable, "-m", "fleetup", *args], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)
        result = CliResult(done.returncode, done.stdout, done.stderr)
    else:
        from fleetup.cli import main

        out, err = io.StringIO(), io.StringIO()
        saved = os.environ.get("FLEETUP_TOKEN")
        os.environ["FLEETUP_TOKEN"] = token or ""
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        finally:
            if saved is None:
                del os.environ["FLEETUP_TOKEN"]
            else:
                os.environ["FLEETUP_TOKEN"] = saved
        result = CliResult(code, out.getvalue(), err.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"fleetup {' '.join(args)} exited {result.returncode}: "
                             f"{result.stderr}")
    return result


def publish(repo: Path, work: Path, version: str, app: str = "hello",
            channels: tuple[str, ...] = ("stable",)) -> None:
    """Add a tiny release ``version`` of ``app`` (platform linux-x86_64) to ``repo``,
    signed for ``channels``."""
    src = work / f"src-{app}-{version}"
    src.mkdir(parents=True)
    (src / "VERSION").write_text(f"{version}\n")
    add_release(repo, ReleaseRequest(src=src, app=app, version=version, platform=PLATFORM,
                                      channels=channels))


@dataclass
class FleetServer:
    """A ``fleetup server`` process; the port and data survive restarts."""

    data: Path
    db_url: str
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more ``fleetup server`` options

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FleetServer:
        self.port = self.port or free_port()
        env = {**os.environ, **FAST, **self.env}
        log = (self.data.parent / f"server-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetup", "server", "--data", str(self.data),
             "--db", self.db_url, "--port", str(self.port), "--workers", str(self.workers),
             "--log-level", "warning", *self.args],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fleetup server exited {self.process.returncode}; see "
                                   f"{log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("fleetup server did not start")

    def kill(self) -> None:
        """SIGKILL the server and its workers: no clean shutdown, no final flush."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own group: workers too
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@dataclass
class SimDevice:
    """A device following the fleet protocol with plain httpx calls."""

    server: str
    device_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    app: str = "hello"
    platform: str = PLATFORM
    channel: str = "stable"
    tags: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    token: str = ""
    failed: list[str] = field(default_factory=list)
    kept: list[str] | None = None  # the releases it reports keeping (None: its version)
    acknowledged: list[str] = field(default_factory=list)  # event ids the server took

    def _post(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.post(f"{self.server}/api/v1/devices/{path}", json=body, headers=headers,
                          timeout=30)

    def enroll(self, enrollment_token: str) -> SimDevice:
        response = self._post("enroll", {
            "enrollment_token": enrollment_token, "device_id": self.device_id,
            "app": self.app, "platform": self.platform, "channel": self.channel,
            "tags": self.tags})
        assert response.status_code == 201, response.text
        self.token = response.json()["device_token"]
        return self

    def checkin(self) -> dict[str, Any]:
        response = self._post("checkin", {
            "device_id": self.device_id, "app": self.app, "platform": self.platform,
            "channel": self.channel, "tags": self.tags, "version": self.version,
            "state": "idle",
            "kept": self.kept if self.kept is not None else [self.version] if self.version
            else [],
            "failed": self.failed})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def report(self, *events: Mapping[str, Any]) -> dict[str, Any]:
        response = self._post("events", {"events": list(events)})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self.acknowledged += [e["id"] for e in events if e["id"] not in self.acknowledged]
        return body

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "type": kind, "at": datetime.now(UTC).isoformat(),
                **fields}

    def install(self, answer: Mapping[str, Any], healthy: bool = True) -> dict[str, Any]:
        """Act on an ``install``/``rollback`` answer as an agent would, and report it."""
        old, new = self.version, answer["version"]
        rollout_id = answer.get("rollout_id")
        if answer["action"] == "rollback":
            self.version = new
            return self.report(self.event("rollback", version=new, from_version=old,
                                          rollout_id=rollout_id, reason=answer["reason"]))
        if healthy:
            self.version = new
            return self.report(self.event("switched", version=new, from_version=old,
                                          rollout_id=rollout_id),
                               self.event("committed", version=new, from_version=old,
                                          rollout_id=rollout_id))
        self.failed.append(new)
        return self.report(self.event("health-failed", version=new, from_version=old,
                                      rollout_id=rollout_id, reason="exit 3"),
                           self.event("rolled-back", version=old, from_version=new,
                                      rollout_id=rollout_id))
