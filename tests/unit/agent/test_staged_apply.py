"""Download now, apply later; the pre-update check; download progress (issue 17: 1, 2, 6).

Whole agent cycles over a real repository through the FakeSource seam: the tree that
``update --download-only`` leaves, ``apply`` with no source at all, what a pre-update
check's "not now" leaves behind, and what ``status`` says meanwhile.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetup._manifest import scan_tree
from fleetup.agent import Agent, Result
from fleetup.agent._config import DownloadConfig, HealthConfig
from fleetup.agent._director import AgentEvent
from fleetup.agent._lifecycle import State
from fleetup.agent._progress import ProgressFile, due
from fleetup.errors import NetworkError, UsageError
from tests.support.clock import FakeClock
from tests.support.fake_source import FakeSource, agent_config, agent_over
from tests.support.releases import SampleRepo

pytestmark = pytest.mark.usefixtures("no_fsync")


@dataclass
class Sink:
    events: list[AgentEvent] = field(default_factory=list)

    def emit(self, event: AgentEvent) -> None:
        self.events.append(event)

    def flush(self) -> None:
        return None


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> SampleRepo:
    repo = SampleRepo.create(tmp_path_factory.mktemp("staged"))
    repo.publish("1.0")
    repo.publish("1.1")
    return repo


@pytest.fixture(scope="module")
def prepared(repo: SampleRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device with 1.0 installed."""
    root = tmp_path_factory.mktemp("prepared") / "device"
    agent, _ = agent_over(repo.path, root)
    assert agent.update(wanted="1.0").result is Result.INSTALLED
    return root


@pytest.fixture
def device(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "device", symlinks=True))


def pre_check(tmp_path: Path, exit_code: int, says: str = "on battery") -> tuple[str, ...]:
    script = tmp_path / f"can-update-{exit_code}.sh"
    script.write_text(f"#!/bin/sh\necho '{says}' >&2\nexit {exit_code}\n")
    script.chmod(0o755)
    return (str(script),)


def offline(repo: SampleRepo, root: Path, **fields: Any) -> Agent:
    """An agent that cannot even make a release source: what ``apply`` must not need."""
    def no_network() -> FakeSource:
        raise NetworkError("no network here")

    return Agent(agent_config(root, **fields), source_factory=no_network)


def copy_of(repo: SampleRepo, tmp_path: Path) -> SampleRepo:
    """A private copy of ``repo`` to publish more into."""
    return SampleRepo(Path(shutil.copytree(repo.path, tmp_path / "repo")), tmp_path / "src")


def journal_of(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / ".fleetup" / "journal.json").read_text()))


# -- download now, apply later ---------------------------------------------------------


def test_download_only_stages_a_verified_tree_and_waits(repo: SampleRepo, device: Path) -> None:
    agent, _ = agent_over(repo.path, device)
    outcome = agent.update(download_only=True)
    assert (outcome.result, outcome.version, outcome.target) == (Result.STAGED, "1.0", "1.1")
    assert agent.store.installed_version() == "1.0"
    _, facts = agent.store.load_manifest("1.1")
    assert scan_tree(device / "releases" / "1.1").digest() == facts.tree_digest
    assert journal_of(device)["state"] == "ready"
    status = agent.status()
    assert status["staged"]["version"] == "1.1"
    assert status["staged"]["since"]
    assert (status["held"], status["progress"], status["state"]) == (None, None, "ready")
    # A second download-only cycle (a restart of the same order) keeps it as it is.
    again, source = agent_over(repo.path, device)
    assert again.update(download_only=True).result is Result.STAGED
    assert again.store.installed_version() == "1.0"
    assert sum(source.downloads.values()) == 0


def test_apply_switches_with_no_network_and_is_health_gated(repo: SampleRepo,
                                                              device: Path) -> None:
    agent_over(repo.path, device)[0].update(download_only=True)
    agent = offline(repo, device)
    outcome = agent.apply()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert journal_of(device)["state"] == "idle"
    assert agent.status()["staged"] is None
    assert agent.history()[-1]["result"] == "committed"
    with pytest.raises(UsageError, match="nothing is staged"):
        agent.apply()


def test_apply_of_a_release_that_fails_its_health_check_rolls_back(
        repo: SampleRepo, device: Path, tmp_path: Path) -> None:
    agent_over(repo.path, device)[0].update(download_only=True)
    unhealthy = HealthConfig(startup_grace=0.0, command=pre_check(tmp_path, 3, "sick"))
    outcome = offline(repo, device, health=unhealthy).apply()
    assert (outcome.result, outcome.version) == (Result.ROLLED_BACK, "1.0")


def test_a_plain_update_applies_what_is_staged_without_downloading_again(
        repo: SampleRepo, device: Path) -> None:
    agent_over(repo.path, device)[0].update(download_only=True)
    agent, source = agent_over(repo.path, device)
    assert agent.update().result is Result.INSTALLED
    assert agent.store.installed_version() == "1.1"
    assert sum(source.downloads.values()) == 0


def test_a_newer_release_replaces_what_is_staged(repo: SampleRepo, device: Path,
                                                 tmp_path: Path) -> None:
    newer = copy_of(repo, tmp_path)
    agent_over(newer.path, device)[0].update(download_only=True)
    newer.publish("1.2")
    agent, _ = agent_over(newer.path, device)
    assert agent.update(download_only=True).target == "1.2"
    assert agent.status()["staged"]["version"] == "1.2"
    assert not (device / "releases" / "1.1").exists(), "the superseded staged tree stayed"


def test_a_staged_release_is_no_rollback_target_and_a_refused_rollback_keeps_it(
        repo: SampleRepo, device: Path) -> None:
    agent, _ = agent_over(repo.path, device)
    agent.update(download_only=True)
    with pytest.raises(UsageError, match="no other kept release"):
        agent.rollback()
    with pytest.raises(UsageError, match=r"1.1 is not a kept release here \(kept: 1.0\)"):
        agent.rollback("1.1")
    assert agent.status()["staged"]["version"] == "1.1"


def test_a_rollback_drops_what_is_staged(repo: SampleRepo, device: Path,
                                         tmp_path: Path) -> None:
    newer = copy_of(repo, tmp_path)
    agent, _ = agent_over(newer.path, device)
    assert agent.update().result is Result.INSTALLED  # 1.1
    newer.publish("1.2")
    agent, _ = agent_over(newer.path, device)
    assert agent.update(download_only=True).target == "1.2"
    assert agent.rollback().version == "1.0"
    assert agent.status()["staged"] is None
    assert agent.store.kept_versions() == ["1.0", "1.1"]


# -- the pre-update check --------------------------------------------------------------


def test_a_failing_pre_check_holds_the_update_without_blaming_it(
        repo: SampleRepo, device: Path, tmp_path: Path) -> None:
    sink = Sink()
    busy = HealthConfig(startup_grace=0.0, pre_command=pre_check(tmp_path, 1))
    agent, _ = agent_over(repo.path, device, health=busy)
    agent.sink = sink
    outcome = agent.update()
    assert (outcome.result, outcome.version, outcome.target) == (Result.HELD, "1.0", "1.1")
    assert outcome.reason == "held: pre-check exited 1: on battery"
    assert agent.store.installed_version() == "1.0"
    assert agent.store.failed() == {}
    status = agent.status()
    assert status["held"]["by"] == "pre-check"
    assert status["held"]["reason"] == "pre-check exited 1: on battery"
    assert status["staged"]["version"] == "1.1"
    held = [e for e in sink.events if e.type == "update-held"]
    assert [(e.version, e.reason) for e in held] == [("1.1", "pre-check exited 1: on battery")]
    assert "switched" not in [e.type for e in sink.events]
    # Retried next cycle: the device is free now, and the staged tree is used.
    ready = HealthConfig(startup_grace=0.0, pre_command=pre_check(tmp_path, 0))
    again, source = agent_over(repo.path, device, health=ready)
    assert again.update().result is Result.INSTALLED
    assert sum(source.downloads.values()) == 0
    assert again.status()["held"] is None


def test_a_held_apply_is_retried_by_the_next_cycle_even_when_staging_only(
        repo: SampleRepo, device: Path, tmp_path: Path) -> None:
    agent_over(repo.path, device)[0].update(download_only=True)
    busy = HealthConfig(startup_grace=0.0, pre_command=pre_check(tmp_path, 1))
    assert offline(repo, device, health=busy).apply().result is Result.HELD
    free = HealthConfig(startup_grace=0.0, pre_command=pre_check(tmp_path, 0))
    agent, _ = agent_over(repo.path, device, health=free)
    assert agent.update(download_only=True).result is Result.INSTALLED


def test_the_pre_check_runs_before_the_switch_with_the_target_named(
        repo: SampleRepo, device: Path, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script = tmp_path / "note.sh"
    script.write_text(f"#!/bin/sh\nreadlink \"$FLEETUP_ROOT/current\" > {seen}\n"
                      f"echo \"$FLEETUP_TARGET_VERSION\" >> {seen}\n")
    script.chmod(0o755)
    health = HealthConfig(startup_grace=0.0, pre_command=(str(script),))
    agent, _ = agent_over(repo.path, device, health=health)
    assert agent.update().result is Result.INSTALLED
    lines = seen.read_text().split()
    assert lines[0].endswith("releases/1.0")  # run before the switch
    assert lines[1] == "1.1"


# -- progress ----------------------------------------------------------------------------


@pytest.mark.parametrize(("last", "now", "done", "total", "expect"), [
    (None, 5.0, 0, 100, True),       # the first report
    (5.0, 5.1, 10, 100, False),      # too soon
    (5.0, 5.5, 10, 100, True),       # the interval has passed
    (5.0, 5.1, 100, 100, True),      # the last one, whenever it comes
    (5.0, 5.1, 100, 0, False),       # no total known: by time only
])
def test_progress_is_written_at_a_bounded_rate(last: float | None, now: float, done: int,
                                               total: int, expect: bool) -> None:
    assert due(last, now, done, total) is expect


def test_progress_file_rewrites_at_most_every_interval(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    progress = ProgressFile(tmp_path / "progress.json", clock)
    writes: list[dict[str, Any]] = []
    progress.write = writes.append  # type: ignore[method-assign]
    report = progress.reporter("downloading", "full")
    for chunk in range(1, 101):   # 100 chunks over 2 seconds
        clock.now += 0.02
        report(chunk * 1000, 100_000)
    assert 4 <= len(writes) <= 6
    assert writes[-1] == {"step": "downloading", "artifact": "full", "done": 100_000,
                          "total": 100_000}


class SlowSource(FakeSource):
    """Reports a download in many chunks, and asks for ``status`` half way."""

    peek: Callable[[], dict[str, Any]]
    seen: list[Any]
    clock: FakeClock

    def download(self, target_path: str, dest: Path, progress: Any = None,
                 tee: Any = None) -> Path:
        assert progress is not None, "no progress callback without a progress bar"
        for done in range(0, 50_001, 10_000):
            progress(done, 100_000)
            self.clock.now += 1.0
        self.seen.append(self.peek())
        return super().download(target_path, dest, progress, tee)


def test_status_reports_a_download_under_way(repo: SampleRepo, device: Path) -> None:
    source = SlowSource(repo.path)
    agent, _ = agent_over(repo.path, device, source=source,
                          download=DownloadConfig(deltas=False))
    source.clock, source.seen, source.peek = FakeClock(), [], agent.status
    agent.progress_file.clock = source.clock
    assert agent.update().result is Result.INSTALLED
    during = source.seen[0]
    assert during["state"] == "downloading"
    assert during["progress"] == {"step": "downloading", "artifact": "full", "done": 50_000,
                                  "total": 100_000}
    assert agent.status()["progress"] is None
    assert not (device / ".fleetup" / "progress.json").exists()


def test_a_stale_progress_file_is_not_reported(repo: SampleRepo, device: Path) -> None:
    (device / ".fleetup" / "progress.json").write_text('{"step": "downloading"}')
    agent, _ = agent_over(repo.path, device)
    assert agent.status()["progress"] is None
    assert agent.status()["state"] == State.IDLE.value
