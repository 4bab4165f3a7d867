"""Sixty devices running the real agent (fleet mode, in process) against a real
``fleetup server`` process: a three-stage rollout to 100 %, then a broken release that
the server pauses at its first stage while every device that took it rolls back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleetup.agent import Agent, build_agent, load_config
from fleetup.repository import init_repo
from fleetup.server import init_store
from tests.support.device import PLATFORM, current_digest, publish
from tests.support.fleet import FleetServer, cli

DEVICES = 60


@dataclass
class World:
    server: FleetServer
    repo: Path
    work: Path
    admin: str
    agents: list[Agent]
    digests: dict[str, str]

    def rollout(self, version: str, stages: str, soak: int = 1) -> int:
        out = cli("rollout", "start", "--server", self.server.url, "--app", "hello",
                  "--version", version, "--channel", "stable", "--stages", stages,
                  "--soak", str(soak), "--min-reports", "1", "--max-failure-rate", "0.2",
                  "--json", token=self.admin)
        return int(json.loads(out.stdout)["id"])

    def publish_and_push(self, version: str, **tree: object) -> None:
        self.digests[version] = publish(self.repo, self.work, version, **tree).digest
        cli("release", "push", "--repo", str(self.repo), "--app", "hello", "--version",
            version, "--server", self.server.url, token=self.admin)

    def rollout_state(self, rollout: int) -> dict[str, object]:
        response = httpx.get(f"{self.server.url}/api/v1/rollouts/{rollout}", timeout=10,
                             headers={"Authorization": f"Bearer {self.admin}"})
        response.raise_for_status()
        body: dict[str, object] = response.json()
        return body

    def cohorts(self, rollout: int) -> dict[str, float]:
        """Each device's cohort in ``rollout``, as the server drew it (from a key it made
        at enrolment, not from the device's id)."""
        response = httpx.get(f"{self.server.url}/api/v1/rollouts/{rollout}/devices",
                             timeout=10, headers={"Authorization": f"Bearer {self.admin}"})
        response.raise_for_status()
        return {d["device_id"]: float(d["cohort"]) for d in response.json()["data"]}

    def round(self) -> None:
        """Every device checks in once and does what it is told (8 at a time)."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            for outcome in pool.map(lambda a: a.update(), self.agents):
                assert outcome.result.value != "failed", outcome.reason

    def versions(self) -> list[str | None]:
        return [a.store.installed_version() for a in self.agents]


def _config(world_dir: Path, server: FleetServer, repo: Path, enrollment: str, i: int) -> Path:
    root = world_dir / "devices" / f"dev-{i:02d}"
    config = world_dir / "devices" / f"dev-{i:02d}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"""app = "hello"
root = "{root}"
server_url = "{server.url}/"
enrollment_token = "{enrollment}"
trusted_root = "{repo / 'public' / 'metadata' / '1.root.json'}"
device_id = "dev-{i:02d}"
platform = "{PLATFORM}"

[health]
startup_grace = 0.0

[download]
retries = 2
backoff = 0.05
""")
    return config


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    repo, work, data = tmp_path / "repo", tmp_path / "work", tmp_path / "data"
    init_repo(repo)
    digests = {"1.0.0": publish(repo, work, "1.0.0").digest}
    init_store(repo, data)
    db_url = f"sqlite:///{data / 'fleetup.db'}"
    server = FleetServer(data, db_url, {"FLEETUP_SERVER_CHECKIN_INTERVAL": "1"}).start()
    try:
        admin = cli("admin", "token", "create", "--role", "admin", "--db", db_url,
                    "--data", str(data)).stdout.strip()
        enrollment = cli("admin", "enrollment-token", "create", "--db", db_url,
                         "--data", str(data)).stdout.strip()
        agents = [build_agent(load_config(_config(tmp_path, server, repo, enrollment, i)))
                  for i in range(DEVICES)]
        yield World(server, repo, work, admin, agents, digests)
    finally:
        server.stop()


def _until(world: World, done: object, rounds: int = 40) -> int:
    for n in range(1, rounds + 1):
        world.round()
        if done():  # type: ignore[operator]
            return n
    raise AssertionError("the fleet did not get there")


@pytest.mark.slow
def test_sixty_agents_through_a_staged_rollout_and_a_broken_release(world: World) -> None:
    first = world.rollout("1.0.0", "100", soak=0)
    _until(world, lambda: set(world.versions()) == {"1.0.0"})
    assert world.rollout_state(first)["state"] == "completed"

    # A good release in three stages (each soaking longer than a round of check-ins):
    # the fleet grows through the stages, lowest cohorts first.
    world.publish_and_push("1.1.0")
    good = world.rollout("1.1.0", "10,50,100", soak=5)
    counts: list[int] = []
    installed_in: dict[str, int] = {}

    def all_on_good() -> bool:
        for agent in world.agents:
            if agent.store.installed_version() == "1.1.0":
                installed_in.setdefault(str(agent.config.device_id), len(counts))
        counts.append(len(installed_in))
        return counts[-1] == DEVICES and world.rollout_state(good)["state"] == "completed"

    _until(world, all_on_good, rounds=80)
    assert counts == sorted(counts), "devices left the release as stages grew"
    first_round = [d for d, n in installed_in.items() if n == 0]
    assert first_round, "nobody installed in the first stage"
    cohort = world.cohorts(good)
    assert all(cohort[d] < 50 for d in first_round), first_round
    # No device of a later stage got the release before every device of an earlier one
    # had it (within a stage the order depends on when in a round the stage began).
    stage_of = {d: sum(cohort[d] >= edge for edge in (10, 50))
                for d in installed_in}
    for stage in (0, 1):
        earlier = [installed_in[d] for d, s in stage_of.items() if s == stage]
        later = [installed_in[d] for d, s in stage_of.items() if s == stage + 1]
        if earlier and later:
            assert max(earlier) <= min(later), (stage, earlier, later)
    assert all(current_digest(a.store.layout.root) == world.digests["1.1.0"]
               for a in world.agents)

    # A broken release: its first stage fails its health check and rolls back, and the
    # server pauses the rollout there.
    world.publish_and_push("1.2.0", health_exit=3)
    bad = world.rollout("1.2.0", "10,50,100")
    _until(world, lambda: world.rollout_state(bad)["state"] == "paused")
    for _ in range(3):  # the paused rollout sends nobody else
        world.round()
    state = world.rollout_state(bad)
    assert state["stage_index"] == 0
    bad_cohort = world.cohorts(bad)
    in_first_stage = {f"dev-{i:02d}" for i in range(DEVICES) if bad_cohort[f"dev-{i:02d}"] < 10}
    tried = set()
    for agent in world.agents:
        device = agent.config.device_id
        history = agent.history()
        if any(h.get("attempted") == "1.2.0" for h in history):
            tried.add(device)
            assert "1.2.0" in agent.store.failed(), device
            rolled = [h for h in history if h["result"] == "rolled-back"]
            assert rolled[-1]["to"] == "1.1.0"
        assert agent.store.installed_version() == "1.1.0"
        assert current_digest(agent.store.layout.root) == world.digests["1.1.0"]
    assert tried, "nobody took the broken release"
    assert tried <= in_first_stage, "devices outside the first stage got the broken release"
