"""``Daemon.run()`` in a thread over a fake-source agent: polls, installs, ticks modules,
supervises the app, answers requests, and stops cleanly.

Waiting is by condition with a generous limit (never a timing assertion).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetup.agent import Agent, CheckResult, Daemon, Outcome, Result
from fleetup.agent._config import ModulesConfig, PolicyConfig
from fleetup.agent._lifecycle import State
from fleetup.agent._modules import ModuleHost
from fleetup.agent._supervisor import AppSupervisor
from fleetup.errors import StateError, UsageError
from tests.support.fake_source import FakeSource, agent_over
from tests.support.fleet import wait_for
from tests.support.releases import SampleRepo
from tests.support.trees import File

TICK = ModulesConfig(tick_interval=0.05, hook_timeout=5.0)


pytestmark = pytest.mark.usefixtures("no_fsync")




def counter_module(log: Path, tag: str) -> str:
    return (f"LOG = {str(log)!r}\n"
            "def _note(hook):\n"
            "    with open(LOG, 'a') as f:\n"
            f"        f.write({tag!r} + ':' + hook + '\\n')\n"
            "def init(): _note('init')\n"
            "def tick(): _note('tick')\n"
            "def cleanup(): _note('cleanup')\n")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class Running:
    """A daemon running in a thread; ``stop()`` ends it and returns its exit code."""

    daemon: Daemon
    thread: threading.Thread
    codes: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def agent(self) -> Agent:
        return self.daemon.agent

    def stop(self) -> int:
        self.daemon.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the daemon did not stop"
        assert not self.errors
        return self.codes[0]


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(daemon: Daemon) -> Running:
        running = Running(daemon, threading.Thread(target=lambda: None))

        def main() -> None:
            try:
                running.codes.append(daemon.run())
            except BaseException as e:
                running.errors.append(e)

        running.thread = threading.Thread(target=main, name="test-daemon", daemon=True)
        running.thread.start()
        started.append(running)
        return running

    yield run
    for running in started:
        running.daemon.stop.set()
        running.thread.join(timeout=60)


@pytest.fixture
def repo(tmp_path: Path) -> SampleRepo:
    repo = SampleRepo.create(tmp_path)
    repo.publish("1.0", modules={"counter": counter_module(tmp_path / "hooks.log", "c@1.0")})
    return repo


def daemon_for(repo: SampleRepo, tmp_path: Path, *, supervisor: bool = False,
               source: FakeSource | None = None, **fields: Any) -> Daemon:
    fields.setdefault("modules", TICK)
    agent, _ = agent_over(repo.path, tmp_path / "device", source=source, **fields)
    modules = ModuleHost(agent.store.layout.current, hook_timeout=5.0, load_entry_points=False)
    app = None
    if supervisor:
        app = AppSupervisor(["sh", "-c", "exec sleep 60"], agent.store.layout.current,
                            agent.app_env, stop_timeout=5.0)
        agent.restarter = app
    return Daemon(agent, supervisor=app, modules=modules)


def test_installs_ticks_modules_and_stops_cleanly(repo: SampleRepo, tmp_path: Path,
                                                  start: Callable[..., Running]) -> None:
    log = tmp_path / "hooks.log"
    running = start(daemon_for(repo, tmp_path))
    wait_for(lambda: running.agent.store.installed_version() == "1.0", what="the first install")
    wait_for(lambda: lines(log).count("c@1.0:tick") >= 2, what="two module ticks")
    assert running.stop() == 0
    assert lines(log)[0] == "c@1.0:init"
    assert lines(log)[-1] == "c@1.0:cleanup"
    assert running.daemon.last_outcome is not None
    assert running.daemon.last_outcome.result is Result.INSTALLED
    assert running.daemon.last_error is None


def test_a_new_release_is_installed_on_the_next_poll_and_modules_reload(
        repo: SampleRepo, tmp_path: Path, start: Callable[..., Running]) -> None:
    log = tmp_path / "hooks.log"
    running = start(daemon_for(repo, tmp_path, poll_interval=0.5))
    wait_for(lambda: "c@1.0:tick" in lines(log), what="1.0's module to tick")
    repo.publish("1.1", modules={"counter": counter_module(log, "c@1.1")})
    wait_for(lambda: running.agent.store.installed_version() == "1.1", what="the update to 1.1")
    wait_for(lambda: "c@1.1:tick" in lines(log), what="1.1's module to tick")
    assert running.stop() == 0
    seen = lines(log)
    assert seen.index("c@1.0:cleanup") < seen.index("c@1.1:init")
    assert seen[-1] == "c@1.1:cleanup"


def test_the_daemon_holds_the_device_lock(repo: SampleRepo, tmp_path: Path,
                                          start: Callable[..., Running]) -> None:
    running = start(daemon_for(repo, tmp_path))
    wait_for(lambda: running.agent.store.installed_version() == "1.0", what="the first install")
    other, _ = agent_over(repo.path, tmp_path / "device")
    with pytest.raises(StateError, match="another fleetup agent"):
        other.update()
    assert running.stop() == 0
    assert other.update().result is Result.NOTHING  # free again


def test_requests_check_update_and_rollback(repo: SampleRepo, tmp_path: Path,
                                            start: Callable[..., Running]) -> None:
    repo.publish("1.1")
    running = start(daemon_for(repo, tmp_path))
    wait_for(lambda: running.agent.store.installed_version() == "1.1", what="the first install")
    check = running.daemon.submit("check").result.result(timeout=60)
    assert isinstance(check, CheckResult)
    assert (check.installed, check.available) == ("1.1", None)
    bad = running.daemon.submit("update", "7.0")
    with pytest.raises(UsageError, match=r"no signed release 7\.0"):
        bad.result.result(timeout=60)
    wait_for(lambda: running.daemon.last_error is not None, what="the error to be noted")
    assert "7.0" in str(running.daemon.last_error)
    rollback = running.daemon.submit("rollback", "1.1").result.result(timeout=60)
    assert isinstance(rollback, Outcome)
    assert rollback.result is Result.NOTHING
    assert running.daemon.last_error is None
    assert running.stop() == 0


def test_a_failed_check_is_noted_and_the_next_poll_tries_again(
        repo: SampleRepo, tmp_path: Path, start: Callable[..., Running]) -> None:
    source = FakeSource(repo.path)
    source.offline = True
    running = start(daemon_for(repo, tmp_path, source=source, poll_interval=0.5))
    wait_for(lambda: running.daemon.last_error is not None, what="the failed check")
    assert "cannot be reached" in str(running.daemon.last_error)
    source.offline = False
    wait_for(lambda: running.agent.store.installed_version() == "1.0", what="the retry")
    assert running.stop() == 0


def test_the_app_is_supervised_and_stopped_with_the_daemon(
        repo: SampleRepo, tmp_path: Path, start: Callable[..., Running]) -> None:
    daemon = daemon_for(repo, tmp_path, supervisor=True)
    running = start(daemon)
    app = daemon.supervisor
    assert app is not None
    wait_for(lambda: app.running, what="the app to start")
    assert app.process is not None
    pid = app.process.pid
    cwd = Path(f"/proc/{pid}/cwd").resolve()
    assert cwd == daemon.agent.store.layout.release_dir("1.0")
    assert running.stop() == 0
    assert not app.running
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "Z" in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2][:3],
             what="the app to be gone")


class GatedSource(FakeSource):
    """Downloads wait until ``gate`` is set (a slow network we control)."""

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def download(self, target_path: str, dest: Path, progress: Any = None,
                 tee: Any = None) -> Path:
        self.waiting.set()
        assert self.gate.wait(timeout=60)
        return super().download(target_path, dest, progress, tee)


def test_a_stop_during_a_download_leaves_it_to_resume(repo: SampleRepo, tmp_path: Path,
                                                      start: Callable[..., Running]) -> None:
    source = GatedSource(repo.path)
    running = start(daemon_for(repo, tmp_path, source=source))
    assert source.waiting.wait(timeout=60)
    running.daemon.stop.set()
    source.gate.set()
    assert running.stop() == 0
    agent = running.agent
    assert running.daemon.last_outcome is not None
    assert running.daemon.last_outcome.result is Result.STOPPED
    assert agent.store.load_journal().state is State.VERIFIED
    assert agent.store.installed_version() is None
    # The next start finishes the job.
    again, _ = agent_over(repo.path, tmp_path / "device", source=source)
    assert again.update().result is Result.INSTALLED
    assert again.store.installed_version() == "1.0"


def test_a_stop_during_the_health_check_waits_for_the_commit(
        tmp_path: Path, start: Callable[..., Running]) -> None:
    repo = SampleRepo.create(tmp_path)
    slow_health = File("#!/bin/sh\nwhile [ ! -e \"$FLEETUP_DATA/go\" ]; do sleep 0.02; done\n",
                       0o755)
    repo.publish("1.0", extra={"health.sh": slow_health})
    running = start(daemon_for(repo, tmp_path))
    agent = running.agent
    wait_for(lambda: agent.store.load_journal().state is State.HEALTH_CHECKING,
             what="the health check to start")
    running.daemon.stop.set()
    time.sleep(0.3)  # the loop has seen the stop: it must be waiting, not gone
    assert running.thread.is_alive()
    (agent.store.layout.data / "go").write_text("")
    assert running.stop() == 0
    assert agent.store.installed_version() == "1.0"
    assert agent.store.load_journal().state is State.IDLE
    assert agent.history()[-1]["result"] == "committed"


def test_a_daemon_stopped_before_it_starts_returns_at_once(repo: SampleRepo,
                                                           tmp_path: Path) -> None:
    daemon = daemon_for(repo, tmp_path)
    daemon.stop.set()
    assert daemon.run() == 0
    assert daemon.agent.store.installed_version() is None
    assert os.path.isdir(daemon.agent.store.layout.state)


def test_a_pushed_check_now_comes_before_the_next_poll(repo: SampleRepo, tmp_path: Path,
                                                       start: Callable[..., Running]) -> None:
    running = start(daemon_for(repo, tmp_path, poll_interval=3600.0))
    wait_for(lambda: running.agent.store.installed_version() == "1.0", what="the first install")
    repo.publish("1.1")
    running.daemon.check_in_within(0.0)  # what the push listener calls on a message
    wait_for(lambda: running.agent.store.installed_version() == "1.1", what="the pushed update")
    assert running.stop() == 0


@pytest.mark.parametrize("policy", ["manual", "next-start"])
def test_the_poll_only_stages_unless_the_policy_applies_now(
        repo: SampleRepo, tmp_path: Path, start: Callable[..., Running], policy: str) -> None:
    running = start(daemon_for(repo, tmp_path, policy=PolicyConfig(apply=policy)))
    wait_for(lambda: running.daemon.last_outcome is not None, what="the first poll")
    assert running.daemon.last_outcome is not None
    assert running.daemon.last_outcome.result is Result.STAGED
    assert running.agent.store.installed_version() is None
    assert running.agent.status()["staged"]["version"] == "1.0"
    assert running.stop() == 0


def test_next_start_applies_what_was_staged_when_the_daemon_starts(
        repo: SampleRepo, tmp_path: Path, start: Callable[..., Running]) -> None:
    staging, _ = agent_over(repo.path, tmp_path / "device")
    assert staging.update(download_only=True).result is Result.STAGED
    running = start(daemon_for(repo, tmp_path, policy=PolicyConfig(apply="next-start"),
                               poll_interval=3600.0))
    wait_for(lambda: running.agent.store.installed_version() == "1.0",
             what="the staged release applied on start")
    assert running.stop() == 0


def test_manual_applies_only_when_told(repo: SampleRepo, tmp_path: Path,
                                       start: Callable[..., Running]) -> None:
    running = start(daemon_for(repo, tmp_path, policy=PolicyConfig(apply="manual")))
    wait_for(lambda: running.agent.staged_version() == "1.0", what="1.0 to be staged")
    outcome = running.daemon.submit("apply").result.result(timeout=60)
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.0")
    assert running.stop() == 0
