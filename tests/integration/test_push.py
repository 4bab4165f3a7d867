"""Push over a real NATS server: a rollout reaches a polling-idle device at once.

Real processes throughout: Debian's nats-server, ``fleetup server --nats``, and
``fleetup agent run`` with ``[push]``. The server tells devices to check in again only
after an hour, so a device that installs a release seconds after its rollout starts can
only have been told by the push. With NATS stopped, the same device keeps its version
until its next poll; the server and the agent go on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetup.repository import init_repo
from fleetup.server import init_store
from tests.support.device import PLATFORM, publish
from tests.support.fleet import ROOT, FleetServer, cli, wait_for
from tests.support.nats import NatsServer, nats_server

__all__ = ["nats_server"]

HOUR = "3600"


@dataclass
class World:
    server: FleetServer
    admin: str
    device: Path  # the agent's install root
    log: Path  # the agent daemon's own log

    def installed(self) -> str | None:
        current = self.device / "current"
        return current.resolve().name if current.is_symlink() else None

    def rollout(self, version: str) -> int:
        out = cli("rollout", "start", "--server", self.server.url, "--app", "hello",
                  "--version", version, "--channel", "stable", "--stages", "100", "--soak",
                  "0", "--min-reports", "1", "--json", token=self.admin).stdout
        return int(json.loads(out)["id"])

    def rollout_state(self, rollout: int) -> str:
        with self.server.client(self.admin) as admin:
            return str(admin.get(f"/api/v1/rollouts/{rollout}").json()["state"])


@pytest.fixture
def world(tmp_path: Path, nats_server: NatsServer) -> Iterator[World]:
    repo, work, data = tmp_path / "repo", tmp_path / "work", tmp_path / "data"
    init_repo(repo)
    publish(repo, work, "1.0.0")
    init_store(repo, data)
    publish(repo, work, "1.1.0")
    db_url = f"sqlite:///{data / 'fleetup.db'}"
    server = FleetServer(data, db_url, {"FLEETUP_SERVER_CHECKIN_INTERVAL": HOUR,
                                        "FLEETUP_SERVER_NATS_URL": nats_server.url}).start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        admin = cli("admin", "token", "create", "--role", "admin", "--db", db_url,
                    "--data", str(data)).stdout.strip()
        enrollment = cli("admin", "enrollment-token", "create", "--db", db_url,
                         "--data", str(data)).stdout.strip()
        cli("release", "push", "--repo", str(repo), "--app", "hello", "--version", "1.1.0",
            "--server", server.url, token=admin)
        root = tmp_path / "device"
        config = tmp_path / "agent.toml"
        config.write_text(f"""app = "hello"
root = "{root}"
server_url = "{server.url}/"
enrollment_token = "{enrollment}"
trusted_root = "{repo / 'public' / 'metadata' / '1.root.json'}"
platform = "{PLATFORM}"
poll_interval = {HOUR}

[push]
url = "{nats_server.url}"
jitter = 0.5

[health]
startup_grace = 0.0
""")
        log = tmp_path / "agent.out"
        agent = subprocess.Popen(
            [sys.executable, "-m", "fleetup", "agent", "-c", str(config), "run"],
            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        world = World(server, admin, root, log)
        wait_for(lambda: "push: listening on NATS" in log.read_text(), 30,
                 "the agent to subscribe")
        wait_for(lambda: _checked_in(root), 30, "the agent's first check-in")
        yield world
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        server.stop()


def _checked_in(root: Path) -> bool:
    status = subprocess.run([sys.executable, "-m", "fleetup", "agent", "-c",
                             str(root.parent / "agent.toml"), "status", "--json"],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    return status.returncode == 0 and json.loads(status.stdout).get("last_check") is not None


@pytest.mark.slow
def test_a_pushed_check_now_installs_a_new_rollout_at_once(world: World,
                                                            nats_server: NatsServer) -> None:
    assert world.installed() is None
    started = time.monotonic()
    first = world.rollout("1.0.0")
    wait_for(lambda: world.installed() == "1.0.0", 60, "the device to install 1.0.0")
    assert time.monotonic() - started < 60  # the next poll was an hour away
    assert "push: rollout" in world.log.read_text()
    wait_for(lambda: world.rollout_state(first) == "completed", 30, "the rollout to end")

    # NATS gone: nothing is pushed and nothing breaks; the device keeps what it has.
    nats_server.stop()
    world.rollout("1.1.0")
    time.sleep(5)
    assert world.installed() == "1.0.0"
    with world.server.client(world.admin) as admin:
        assert admin.get("/healthz").status_code == 200
