"""One real agent (fleet mode, in process) against a real ``fleetup server`` process,
driven by the real operator CLI (issue 16 §1, §4): pinned, left out of a rollout,
unpinned, rolled back to a kept release, and given feature flags — one of them named
``version`` — that reach ``.fleetup/flags.json`` and choose nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetup.agent import Agent, build_agent, load_config
from fleetup.repository import init_repo
from fleetup.server import init_store
from tests.integration.test_fleet_agents import _config
from tests.support.device import publish
from tests.support.fleet import FleetServer, cli, wait_for


@dataclass
class One:
    server: FleetServer
    admin: str
    agent: Agent

    def run(self, *args: str) -> Any:
        out = cli(*args, "--server", self.server.url, "--json", token=self.admin)
        return json.loads(out.stdout)

    def installed(self) -> str | None:
        return self.agent.store.installed_version()

    def until(self, version: str) -> None:
        wait_for(lambda: self.agent.update() and self.installed() == version,
                 what=f"the agent on {version}")

    def flags(self) -> dict[str, Any]:
        self.agent.update()
        return self.agent.store.load_flags()


@pytest.fixture
def one(tmp_path: Path) -> Iterator[One]:
    repo, work, data = tmp_path / "repo", tmp_path / "work", tmp_path / "data"
    init_repo(repo)
    publish(repo, work, "1.0.0")
    init_store(repo, data)
    db_url = f"sqlite:///{data / 'fleetup.db'}"
    server = FleetServer(data, db_url, {"FLEETUP_SERVER_CHECKIN_INTERVAL": "1"}).start()
    try:
        admin = cli("admin", "token", "create", "--role", "admin", "--db", db_url,
                    "--data", str(data)).stdout.strip()
        enrollment = cli("admin", "enrollment-token", "create", "--db", db_url,
                         "--data", str(data)).stdout.strip()
        publish(repo, work, "1.1.0")
        cli("release", "push", "--repo", str(repo), "--app", "hello", "--version", "1.1.0",
            "--server", server.url, token=admin)
        agent = build_agent(load_config(_config(tmp_path, server, repo, enrollment, 0)))
        yield One(server, admin, agent)
    finally:
        server.stop()


def test_pinned_unpinned_rolled_back_and_flagged(one: One) -> None:
    one.agent.update()  # enrolls; no rollout yet: nothing to install
    assert one.installed() is None
    one.run("device", "pin", "dev-00", "--version", "1.0.0")
    one.until("1.0.0")
    one.run("rollout", "start", "--app", "hello", "--version", "1.1.0", "--channel",
            "stable", "--stages", "100", "--soak", "0")
    # A flag set after the rollout: once it arrives, the caches hold the rollout too.
    one.run("flag", "set", "hello", "color", "blue")
    wait_for(lambda: one.flags() == {"color": "blue"}, what="the flag on the device")
    assert one.installed() == "1.0.0", "a pinned device took a rollout's release"
    one.run("device", "unpin", "dev-00")
    one.until("1.1.0")
    # Back to the kept 1.0.0, once the server knows the device runs 1.1.0 and keeps it.
    wait_for(lambda: one.agent.update() and _runs_keeping(
        one.run("device", "show", "dev-00", "--events", "0")),
             what="1.1.0 reported, 1.0.0 kept")
    assert one.run("device", "rollback", "dev-00", "--to", "1.0.0")["rollback_to"] == "1.0.0"
    one.until("1.0.0")
    # A flag named like the answer's install field reaches the app and chooses nothing.
    one.run("flag", "set", "hello", "version", '"1.1.0"')
    wait_for(lambda: one.flags() == {"color": "blue", "version": "1.1.0"},
             what="the version flag on the device")
    for _ in range(3):
        one.agent.update()
    assert one.installed() == "1.0.0"
    flags_file = one.agent.store.layout.state / "flags.json"
    assert json.loads(flags_file.read_text()) == {"color": "blue", "version": "1.1.0"}


def _runs_keeping(shown: dict[str, Any]) -> bool:
    return shown["version"] == "1.1.0" and "1.0.0" in (shown["kept"] or [])
