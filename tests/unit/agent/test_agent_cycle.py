"""Whole agent cycles over real repositories and real files, through the release seam.

Each test gets its own copy of a repository published once per module (publishing
makes deltas, which takes a moment), a fresh device root, and a :class:`FakeSource`
whose switches inject network failures and damaged deltas.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest

from fleetup._facts import ReleaseFacts
from fleetup._manifest import scan_tree
from fleetup._versions import UpdateType
from fleetup.agent import Agent, Result
from fleetup.agent._config import DownloadConfig, HealthConfig, MaintenanceWindow, PolicyConfig
from fleetup.agent._director import AgentEvent
from fleetup.agent._install import prune_releases
from fleetup.agent._lifecycle import MAX_RESUMES, Journal, Kind, State
from fleetup.agent._stage import stage_archive
from fleetup.errors import HealthCheckError, NetworkError, StateError, UsageError
from fleetup.repository import (
    FileRepository,
    RepoConfig,
    RepoLayout,
    releases_of,
    target_file_name,
)
from tests.support.clock import FakeClock
from tests.support.fake_source import FakeSource, agent_config, agent_over
from tests.support.releases import APP, PLATFORM, SampleRepo
from tests.support.trees import File, fingerprint, wheel_like

# health.sh of a release that passes only once the operator has fixed the device
NEEDS_OK_FILE = {"health.sh": File(
    "#!/bin/sh\n[ -e \"$FLEETUP_DATA/ok\" ] || { echo 'no ok file in data/' >&2; exit 3; }\n",
    0o755)}

Spec = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


def spec(*releases: str | tuple[str, dict[str, Any]]) -> Spec:
    """("1.0", ("1.1", {"health_exit": 3})) -> a hashable publishing plan."""
    plan = []
    for item in releases:
        version, options = (item, {}) if isinstance(item, str) else item
        plan.append((version, tuple(sorted(options.items()))))
    return tuple(plan)


pytestmark = pytest.mark.usefixtures("no_fsync")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Spec], SampleRepo]:
    built: dict[str, SampleRepo] = {}

    def template(plan: Spec) -> SampleRepo:
        key = repr(plan)  # options may hold dicts: key on their (deterministic) repr
        if key not in built:
            repo = SampleRepo.create(tmp_path_factory.mktemp("template"))
            for version, options in plan:
                repo.publish(version, **dict(options))
            built[key] = repo
        return built[key]

    return template


@pytest.fixture
def make_repo(templates: Callable[[Spec], SampleRepo], tmp_path: Path
              ) -> Callable[..., SampleRepo]:
    """A private copy of a repository published as ``spec(...)`` says."""
    def make(*releases: str | tuple[str, dict[str, Any]]) -> SampleRepo:
        template = templates(spec(*releases))
        copy = tmp_path / f"repo-{len(list(tmp_path.glob('repo-*')))}"
        shutil.copytree(template.path, copy, symlinks=True)
        return SampleRepo(copy, template.work)

    return make


@dataclass
class Sink:
    """An EventSink that remembers event types."""

    events: list[AgentEvent] = field(default_factory=list)

    def emit(self, event: AgentEvent) -> None:
        self.events.append(event)

    def flush(self) -> None:
        return None

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]


@dataclass
class FakeRestarter:
    """Counts restarts and remembers which version each one started; may refuse one."""

    current: Path
    started: list[str | None] = field(default_factory=list)
    refuse: str | None = None

    def restart(self) -> None:
        version = os.readlink(self.current).rpartition("/")[2] if self.current.is_symlink() \
            else None
        self.started.append(version)
        if version is not None and version == self.refuse:
            raise HealthCheckError(f"the app {version} did not start")

    def exits_since(self, moment: float) -> list[int]:
        return []


def new_agent(repo: SampleRepo, tmp_path: Path, **fields: Any) -> tuple[Agent, FakeSource]:
    return agent_over(repo.path, tmp_path / "device", **fields)


def signed_facts(repo: SampleRepo, version: str) -> ReleaseFacts:
    source = FakeSource(repo.path)
    return next(f for f in source.releases(APP, PLATFORM) if f.version == version)


def release_path(version: str) -> str:
    return f"{APP}/{PLATFORM}/{APP}-{version}.tar.zst"


def delta_path(old: str, new: str) -> str:
    return f"{APP}/{PLATFORM}/deltas/{APP}-{old}_to_{new}.fdelta"


def assert_installed(agent: Agent, repo: SampleRepo, version: str) -> None:
    """``current`` is ``releases/<version>``, byte for byte the signed, published tree."""
    layout = agent.store.layout
    assert os.readlink(layout.current) == f"releases/{version}"
    assert agent.store.installed_version() == version
    assert scan_tree(layout.current.resolve()).digest() == signed_facts(repo, version).tree_digest
    assert fingerprint(layout.current.resolve()) == fingerprint(repo.source(version))


def last(agent: Agent) -> dict[str, Any]:
    return agent.history()[-1]


# -- installing ----------------------------------------------------------------------------


def test_first_install_takes_the_newest_release(make_repo: Callable[..., SampleRepo],
                                                tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    outcome = agent.update()
    assert (outcome.result, outcome.version, outcome.target) == (Result.INSTALLED, "1.1", "1.1")
    assert_installed(agent, repo, "1.1")
    assert source.downloads == {release_path("1.1"): 1}
    assert agent.store.kept_versions() == ["1.1"]
    assert agent.store.load_journal().state is State.IDLE
    record = last(agent)
    assert (record["result"], record["from"], record["to"], record["artifact"]) == (
        "committed", None, "1.1", "full")
    assert record["reason"] == "first install"
    assert list(agent.store.layout.downloads.iterdir()) == []


def test_update_swaps_current_through_a_delta(make_repo: Callable[..., SampleRepo],
                                              tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    assert agent.update(wanted="1.0").result is Result.INSTALLED
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert_installed(agent, repo, "1.1")
    # The delta is far smaller than the archive, so only the delta was fetched.
    assert source.delta(APP, PLATFORM, "1.0", "1.1") is not None
    assert source.downloads[delta_path("1.0", "1.1")] == 1
    assert source.downloads[release_path("1.1")] == 0
    assert last(agent)["artifact"] == "delta:1.0"
    assert agent.store.kept_versions() == ["1.0", "1.1"]
    assert (agent.store.layout.release_dir("1.0") / "VERSION").read_text() == "1.0\n"


def test_a_rebuilt_binary_arrives_as_a_delta_of_the_default_method(tmp_path: Path) -> None:
    # A default repository, a release whose dist-info is renamed and whose 1.1 MB
    # library is rebuilt: the publisher makes an HDiffPatch delta, the agent applies it.
    repo = SampleRepo.create(tmp_path)
    for version, build in (("1.0", 0), ("1.1", 1)):
        # Just above the size where bsdiff4 is no longer tried beside HDiffPatch.
        repo.publish(version, extra=wheel_like(version, build, library_size=(1 << 20) + 4096))
    agent, source = new_agent(repo, tmp_path)
    assert agent.update(wanted="1.0").result is Result.INSTALLED
    found = source.delta(APP, PLATFORM, "1.0", "1.1")
    assert found is not None
    assert found[0].requires == ("hdiff",)
    assert agent.update().result is Result.INSTALLED
    assert_installed(agent, repo, "1.1")
    assert last(agent)["artifact"] == "delta:1.0"
    assert source.downloads[release_path("1.1")] == 0


@pytest.mark.parametrize("damage", ["missing", "corrupt", "network", "deltas-off"])
def test_a_missing_or_bad_delta_falls_back_to_the_full_archive(
        make_repo: Callable[..., SampleRepo], tmp_path: Path, damage: str) -> None:
    repo = make_repo("1.0", "1.1")
    deltas = damage != "deltas-off"
    agent, source = new_agent(repo, tmp_path, download=DownloadConfig(deltas=deltas))
    agent.update(wanted="1.0")
    source.hide_deltas = damage == "missing"
    source.corrupt_deltas = damage == "corrupt"
    if damage == "network":
        source.fail_downloads.add(".fdelta")
    outcome = agent.update()
    assert outcome.result is Result.INSTALLED
    assert_installed(agent, repo, "1.1")
    assert source.downloads[release_path("1.1")] == 1
    assert source.downloads[delta_path("1.0", "1.1")] == (1 if damage in ("corrupt", "network")
                                                          else 0)
    assert last(agent)["artifact"] == "full"


def test_a_delta_that_does_not_apply_to_a_damaged_base_falls_back(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    payload = agent.store.layout.release_dir("1.0") / "bin" / "app"
    payload.write_bytes(payload.read_bytes()[::-1])  # the kept tree no longer matches
    outcome = agent.update()
    assert outcome.result is Result.INSTALLED
    assert_installed(agent, repo, "1.1")
    assert source.downloads[delta_path("1.0", "1.1")] == 1
    assert source.downloads[release_path("1.1")] == 1
    assert last(agent)["artifact"] == "full"


def test_events_follow_the_lifecycle(make_repo: Callable[..., SampleRepo],
                                     tmp_path: Path) -> None:
    repo = make_repo("1.0")
    sink = Sink()
    source = FakeSource(repo.path)
    agent = Agent(agent_config(tmp_path / "device"), source_factory=lambda: source, sink=sink)
    agent.update()
    assert sink.types == ["download-started", "download-finished", "staged", "switched",
                          "health-passed", "committed"]
    update_ids = {e.update_id for e in sink.events}
    assert len(update_ids) == 1
    assert None not in update_ids


def test_progress_is_reported_per_download(make_repo: Callable[..., SampleRepo],
                                           tmp_path: Path) -> None:
    repo = make_repo("1.0")
    bars: dict[str, list[int]] = {}

    def progress(label: str, total: int) -> Callable[[int], None]:
        bars[label] = [total]
        return bars[label].append

    source = FakeSource(repo.path)
    agent = Agent(agent_config(tmp_path / "device"), source_factory=lambda: source,
                  progress=progress)
    agent.update()
    length = source.release_length(signed_facts(repo, "1.0"))
    assert bars == {f"{APP} 1.0": [length, length]}


# -- health failures -----------------------------------------------------------------------


def test_a_failed_health_check_rolls_back_and_is_remembered(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", ("1.1", {"health_exit": 3}))
    agent, source = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    outcome = agent.update()
    assert (outcome.result, outcome.version, outcome.target) == (Result.ROLLED_BACK, "1.0",
                                                                 "1.1")
    assert "health command exited 3" in outcome.reason
    assert "health of 1.1: exit 3" in outcome.reason  # the stderr tail
    assert_installed(agent, repo, "1.0")
    assert not agent.store.layout.release_dir("1.1").exists()
    assert agent.store.kept_versions() == ["1.0"]
    assert set(agent.store.failed()) == {"1.1"}
    record = last(agent)
    assert (record["result"], record["from"], record["to"], record["attempted"]) == (
        "rolled-back", "1.0", "1.0", "1.1")
    assert "exited 3" in record["reason"]
    # Not installed again by itself: check says up to date and names it.
    downloads = sum(source.downloads.values())
    check = agent.check()
    assert check.available is None
    assert [v for v, _ in check.skipped] == ["1.1"]
    assert agent.update().result is Result.NOTHING
    assert sum(source.downloads.values()) == downloads
    status = agent.status()
    assert [f["version"] for f in status["failed"]] == ["1.1"]
    assert "exited 3" in status["failed"][0]["reason"]


def test_a_newer_release_is_still_tried_after_a_failed_one(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", ("1.1", {"health_exit": 3}))
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    assert agent.update().result is Result.ROLLED_BACK
    repo.publish("1.2")
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.2")
    assert_installed(agent, repo, "1.2")


def test_an_operator_can_install_a_failed_release_on_purpose(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", ("1.1", {"extra": NEEDS_OK_FILE}))
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    first = agent.update()
    assert first.result is Result.ROLLED_BACK
    assert "no ok file in data/" in first.reason
    (agent.store.layout.data / "ok").write_text("fixed")
    outcome = agent.update(wanted="1.1")
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert outcome.reason == "requested by the operator"
    assert agent.store.failed() == {}  # a commit clears it


def test_a_first_install_that_fails_its_health_check_leaves_nothing_installed(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo(("1.0", {"health_exit": 1}))
    agent, _ = new_agent(repo, tmp_path)
    outcome = agent.update()
    assert (outcome.result, outcome.version, outcome.target) == (Result.ROLLED_BACK, None,
                                                                 "1.0")
    layout = agent.store.layout
    assert not layout.current.exists()
    assert not layout.current.is_symlink()
    assert agent.store.kept_versions() == []
    assert not layout.release_dir("1.0").exists()
    assert set(agent.store.failed()) == {"1.0"}
    assert agent.status()["version"] is None


def test_an_app_that_does_not_restart_is_rolled_back(make_repo: Callable[..., SampleRepo],
                                                     tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    restarter = FakeRestarter(tmp_path / "device" / "current", refuse="1.1")
    agent, _ = new_agent(repo, tmp_path)
    agent.restarter = restarter
    agent.update(wanted="1.0")
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.ROLLED_BACK, "1.0")
    assert "did not start" in outcome.reason
    assert restarter.started == ["1.0", "1.1", "1.0"]
    assert set(agent.store.failed()) == {"1.1"}


# -- kept releases, data/, rollbacks ------------------------------------------------------


def test_keep_prunes_old_releases_only_after_a_commit(make_repo: Callable[..., SampleRepo],
                                                      tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1", "1.2", ("1.3", {"health_exit": 2}))
    agent, _ = new_agent(repo, tmp_path, keep=2)
    for version in ("1.0", "1.1", "1.2"):
        assert agent.update(wanted=version).result is Result.INSTALLED
    assert agent.store.kept_versions() == ["1.1", "1.2"]
    assert not agent.store.layout.release_dir("1.0").exists()
    assert not (agent.store.layout.manifests / "1.0.json").exists()
    assert agent.update().result is Result.ROLLED_BACK  # 1.3 fails: nothing pruned
    assert agent.store.kept_versions() == ["1.1", "1.2"]


def test_pruning_never_removes_the_current_release(make_repo: Callable[..., SampleRepo],
                                                   tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1", "1.2")
    agent, _ = new_agent(repo, tmp_path, keep=3)
    for version in ("1.0", "1.1", "1.2"):
        agent.update(wanted=version)
    agent.rollback(to="1.0")
    assert prune_releases(agent.store, keep=1) == ["1.1", "1.2"]
    assert agent.store.kept_versions() == ["1.0"]
    assert_installed(agent, repo, "1.0")


def test_data_is_untouched_by_update_and_rollback(make_repo: Callable[..., SampleRepo],
                                                  tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1", ("1.2", {"health_exit": 1}))
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    data = agent.store.layout.data
    (data / "db").mkdir()
    (data / "db" / "app.sqlite").write_bytes(os.urandom(2048))
    (data / "settings.json").write_text('{"volume": 11}')
    (data / "secret").write_text("s")
    (data / "secret").chmod(0o600)
    os.symlink("settings.json", data / "link")
    before = fingerprint(data)
    assert agent.update(wanted="1.1").result is Result.INSTALLED
    assert agent.update().result is Result.ROLLED_BACK       # 1.2 fails its health check
    assert agent.rollback().result is Result.REVERTED        # operator: back to 1.0
    assert fingerprint(data) == before


def test_rollback_to_the_previous_and_to_a_named_release(make_repo: Callable[..., SampleRepo],
                                                         tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1", "1.2")
    agent, source = new_agent(repo, tmp_path)
    for version in ("1.0", "1.1", "1.2"):
        agent.update(wanted=version)
    downloads = sum(source.downloads.values())
    outcome = agent.rollback()
    assert (outcome.result, outcome.version) == (Result.REVERTED, "1.1")
    assert_installed(agent, repo, "1.1")
    outcome = agent.rollback(to="1.0")
    assert (outcome.result, outcome.version) == (Result.REVERTED, "1.0")
    assert_installed(agent, repo, "1.0")
    assert sum(source.downloads.values()) == downloads  # no download: kept trees
    assert agent.store.kept_versions() == ["1.0", "1.1", "1.2"]
    assert [(r["kind"], r["result"], r["to"]) for r in agent.history()[-2:]] == [
        ("rollback", "rolled-back", "1.1"), ("rollback", "rolled-back", "1.0")]
    assert agent.history()[-1]["reason"] == "rolled back by the operator"
    # What the operator rolled back from is not installed again by itself.
    assert set(agent.store.failed()) == {"1.2", "1.1"}
    assert agent.update().result is Result.NOTHING
    assert agent.rollback(to="1.0").result is Result.NOTHING


def test_rollback_refuses_what_is_not_kept(make_repo: Callable[..., SampleRepo],
                                           tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, _ = new_agent(repo, tmp_path)
    with pytest.raises(UsageError, match="no other kept release"):
        agent.rollback()
    agent.update(wanted="1.0")
    with pytest.raises(UsageError, match="no other kept release"):
        agent.rollback()
    with pytest.raises(UsageError, match="not a kept release"):
        agent.rollback(to="1.1")
    assert_installed(agent, repo, "1.0")


def test_a_yank_rolls_back_to_a_kept_release(make_repo: Callable[..., SampleRepo],
                                             tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    agent.update()
    repo.yank("1.1", "corrupts the database")
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.REVERTED, "1.0")
    assert "1.1 was yanked: corrupts the database" in outcome.reason
    assert_installed(agent, repo, "1.0")
    assert agent.update().result is Result.NOTHING  # the yanked one is never reinstalled
    # Its tree is gone too, so a later rollback cannot land on it.
    assert agent.store.kept_versions() == ["1.0"]
    with pytest.raises(UsageError, match="no other kept release"):
        agent.rollback()


def test_leaving_a_yanked_release_for_a_newer_one_retires_it(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1", "1.2")
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    agent.update(wanted="1.1")
    repo.yank("1.1")
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.2")
    assert "1.1" not in agent.store.kept_versions()
    assert agent.rollback().version == "1.0"


def test_a_rollback_whose_release_was_removed_by_hand_does_not_get_stuck(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1", ("1.2", {"health_exit": 3}))
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    agent.update(wanted="1.1")
    # Someone deletes the running release's tree by hand; the update to 1.2 fails
    # its health check and must go back somewhere that exists.
    from fleetup.agent._install import remove_release

    agent.store.point_current("1.0")
    remove_release(agent.store, "1.1")
    agent.store.point_current(None)
    agent.store.point_current("1.0")
    journal = Journal(state=State.ROLLING_BACK, kind=Kind.UPDATE, update_id="u1", app=APP,
                      installed="1.1", target="1.2", restore="1.1", blame=True,
                      reason="health command exited 3")
    agent.store.save_journal(journal)
    outcome = agent.update()
    assert agent.store.load_journal().state is State.IDLE
    rolled = [h for h in agent.history() if h["result"] == "rolled-back"]
    assert rolled[-1]["to"] == "1.0"  # the newest kept release that still exists
    assert "1.2" in agent.store.failed()
    # ... and the same update then went on to the newest release that has not failed.
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")


def test_a_yank_without_a_kept_older_release_is_a_signed_downgrade(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, _ = new_agent(repo, tmp_path)
    agent.update()  # first install: 1.1 only
    repo.yank("1.1")
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.0")
    assert_installed(agent, repo, "1.0")


def test_installing_a_kept_newer_release_needs_no_download(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    agent.update()
    agent.rollback()
    downloads = sum(source.downloads.values())
    outcome = agent.update(wanted="1.1")
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert sum(source.downloads.values()) == downloads
    assert last(agent)["artifact"] == "kept"
    assert_installed(agent, repo, "1.1")


def test_the_maintenance_window_follows_the_agent_clock(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    night = PolicyConfig(window=MaintenanceWindow(time(22, 0), time(4, 0)))
    now = [datetime(2024, 1, 15, 12, 0).astimezone()]  # local wall-clock time
    source = FakeSource(repo.path)
    agent = Agent(agent_config(tmp_path / "device", policy=night),
                  source_factory=lambda: source, clock=lambda: now[0])
    assert agent.update(wanted="1.0").result is Result.INSTALLED  # on purpose: no wait
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.NOTHING, "1.0")
    assert "maintenance window 22:00-04:00" in outcome.reason
    assert agent.status()["pending"]["version"] == "1.1"
    assert outcome.waiting is not None
    assert agent.status()["waiting"] == {
        "version": "1.1", "reason": "waiting for the maintenance window 22:00-04:00"}
    now[0] = datetime(2024, 1, 15, 23, 30).astimezone()
    outcome = agent.update()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert agent.status()["pending"] is None
    assert agent.status()["waiting"] is None


# -- the health check's start-up grace --------------------------------------------------


def test_an_update_without_an_app_waits_no_start_up_grace(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    """Issue 11 §3: with no app restarted there is no start-up to watch, so the default
    2 s grace is not waited (the health check's clock seam records every wait)."""
    repo = make_repo("1.0", "1.1")
    clock = FakeClock(100.0)
    source = FakeSource(repo.path)
    agent = Agent(agent_config(tmp_path / "device", health=HealthConfig()),
                  source_factory=lambda: source, monotonic=clock, sleep=clock.sleep)
    assert agent.update(wanted="1.0").result is Result.INSTALLED
    assert agent.update().result is Result.INSTALLED
    assert clock.sleeps == []


def test_a_restarted_app_still_gets_its_start_up_grace(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0")
    clock = FakeClock(100.0)
    source = FakeSource(repo.path)
    agent = Agent(agent_config(tmp_path / "device", health=HealthConfig(startup_grace=2.0)),
                  source_factory=lambda: source, monotonic=clock, sleep=clock.sleep,
                  restarter=FakeRestarter(tmp_path / "device" / "current"))
    assert agent.update().result is Result.INSTALLED
    assert 2.0 <= sum(clock.sleeps) <= 2.0 + 0.1 + 1e-9  # the grace, in 0.1 s looks


# -- failures that are not remembered -------------------------------------------------------


def test_a_failed_download_is_not_remembered(make_repo: Callable[..., SampleRepo],
                                             tmp_path: Path) -> None:
    repo = make_repo("1.0")
    agent, source = new_agent(repo, tmp_path)
    source.fail_downloads.add(".tar.zst")
    outcome = agent.update()
    assert (outcome.result, outcome.version, outcome.target) == (Result.FAILED, None, "1.0")
    assert "connection reset" in outcome.reason
    assert agent.store.failed() == {}
    assert (last(agent)["result"], last(agent)["to"]) == ("failed", None)  # nothing changed
    assert agent.store.load_journal().state is State.IDLE
    assert agent.status()["pending"]["version"] == "1.0"  # still waiting to install
    source.fail_downloads.clear()
    assert agent.update().result is Result.INSTALLED
    assert source.downloads[release_path("1.0")] == 2


def test_a_failed_check_changes_nothing(make_repo: Callable[..., SampleRepo],
                                        tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    before = fingerprint(agent.store.layout.root / "releases")
    source.offline = True
    with pytest.raises(NetworkError):
        agent.update()
    with pytest.raises(NetworkError):
        agent.check()
    assert fingerprint(agent.store.layout.root / "releases") == before
    assert_installed(agent, repo, "1.0")


def test_a_second_agent_on_the_same_root_is_refused(make_repo: Callable[..., SampleRepo],
                                                    tmp_path: Path) -> None:
    repo = make_repo("1.0")
    agent, _ = new_agent(repo, tmp_path)
    other, _ = new_agent(repo, tmp_path)
    with agent.store.lock(), pytest.raises(StateError, match="another fleetup agent"):
        other.update()


def test_a_check_beside_another_agent_decides_and_records_nothing(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, _ = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    status = agent.status()
    other, _ = new_agent(repo, tmp_path)
    with agent.store.lock():
        answer = other.check()
    assert (answer.installed, answer.available) == ("1.0", "1.1")
    assert other.status() == status


# -- resuming after a crash ----------------------------------------------------------------


@dataclass
class Device:
    agent: Agent
    source: FakeSource
    repo: SampleRepo

    def facts(self, version: str) -> ReleaseFacts:
        return signed_facts(self.repo, version)

    def archive(self, version: str) -> Path:
        layout = RepoLayout(self.repo.path)
        targets = FileRepository(layout, RepoConfig.load(layout.config)).targets()
        target, _ = releases_of(targets)[release_path(version)]
        return target_file_name(layout, target)

    def stage(self, version: str) -> None:
        stage_archive(self.agent.store, self.facts(version), self.archive(version))

    def journal(self, state: State, *, target: str = "1.1", installed: str | None = "1.0",
                **fields: Any) -> None:
        values: dict[str, Any] = {
            "state": state, "kind": Kind.UPDATE, "update_id": "crashed-run", "app": APP,
            "installed": installed, "target": target, "restore": installed,
            "release": self.facts(target).to_custom(), "reason": "minor update",
            "started_at": datetime.now(UTC).isoformat()}
        values.update(fields)
        self.agent.store.save_journal(Journal(**values))


@pytest.fixture
def device(make_repo: Callable[..., SampleRepo], tmp_path: Path) -> Device:
    """1.0 installed, 1.1 published (both healthy)."""
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    return Device(agent, source, repo)


def test_resume_with_nothing_interrupted(device: Device) -> None:
    partial = device.agent.store.layout.partial_dir("1.1")
    partial.mkdir()
    assert device.agent.resume() is None
    assert not partial.exists()


def test_a_cycle_that_dies_in_the_same_place_gives_up_and_the_next_run_starts_clean(
        device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mender's state-loop guard: a handler that crashes every run (here the stage step)
    must not lock the device out of updates for good."""
    from fleetup.agent import _stage

    def crash(*_: object, **__: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    downloaded = device.agent.store.layout.downloads / "hello-1.1.tar.zst"
    shutil.copyfile(device.archive("1.1"), downloaded)
    device.journal(State.VERIFIED, artifact="full", artifact_path=str(downloaded))
    monkeypatch.setattr(_stage, "stage_archive", crash)
    for _ in range(MAX_RESUMES):
        with pytest.raises(RecursionError):
            device.agent.resume()
    outcome = device.agent.resume()
    assert outcome is not None
    assert outcome.result is Result.FAILED
    assert outcome.reason.startswith(f"gave up after {MAX_RESUMES} interrupted tries")
    assert device.agent.store.load_journal().state is State.IDLE
    assert last(device.agent)["result"] == "failed"
    monkeypatch.undo()
    assert device.agent.update().result is Result.INSTALLED
    assert_installed(device.agent, device.repo, "1.1")


def test_a_clean_up_that_fails_does_not_stop_the_cycle(
        device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetup.agent import _install

    partial = device.agent.store.layout.partial_dir("9.9")
    partial.mkdir()

    def refuse(path: Path) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(_install, "remove_tree", refuse)
    assert device.agent.update().result is Result.INSTALLED
    assert device.agent.store.load_journal().state is State.IDLE
    assert partial.exists()  # left for the next try, logged


def test_resume_an_interrupted_download(device: Device) -> None:
    device.journal(State.DOWNLOADING)
    outcome = device.agent.resume()
    assert outcome is not None
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert_installed(device.agent, device.repo, "1.1")
    assert last(device.agent)["update_id"] == "crashed-run"


def test_resume_a_verified_download(device: Device) -> None:
    downloaded = device.agent.store.layout.downloads / "hello-1.1.tar.zst"
    shutil.copyfile(device.archive("1.1"), downloaded)
    device.journal(State.VERIFIED, artifact="full", artifact_path=str(downloaded))
    outcome = device.agent.resume()
    assert outcome is not None
    assert outcome.result is Result.INSTALLED
    assert_installed(device.agent, device.repo, "1.1")
    assert sum(device.source.downloads.values()) == 1  # only 1.0's first install


def test_resume_a_staged_update(device: Device) -> None:
    device.stage("1.1")
    device.journal(State.STAGED, artifact="full")
    outcome = device.agent.resume()
    assert outcome is not None
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert_installed(device.agent, device.repo, "1.1")
    assert device.agent.store.load_journal().state is State.IDLE
    assert device.source.refreshes == 1  # no network needed to finish


@pytest.mark.parametrize("state", [State.SWITCHED, State.HEALTH_CHECKING])
def test_an_interrupted_health_check_rolls_back_without_blame(device: Device,
                                                              state: State) -> None:
    device.stage("1.1")
    device.agent.store.point_current("1.1")
    device.journal(state, artifact="full")
    outcome = device.agent.resume()
    assert outcome is not None
    assert (outcome.result, outcome.version) == (Result.NOTHING, "1.0")
    assert_installed(device.agent, device.repo, "1.0")
    assert device.agent.store.failed() == {}
    assert device.agent.store.kept_versions() == ["1.0", "1.1"]
    assert f"interrupted in {state}" in last(device.agent)["reason"]


def test_update_after_an_interrupted_health_check_tries_again(device: Device) -> None:
    device.stage("1.1")
    device.agent.store.point_current("1.1")
    device.journal(State.HEALTH_CHECKING, artifact="full")
    downloads = sum(device.source.downloads.values())
    outcome = device.agent.update()
    assert (outcome.result, outcome.version) == (Result.INSTALLED, "1.1")
    assert_installed(device.agent, device.repo, "1.1")
    assert sum(device.source.downloads.values()) == downloads  # the staged tree is reused
    assert [r["result"] for r in device.agent.history()[-2:]] == ["rolled-back", "committed"]


def test_an_interrupted_first_install_resumes_to_nothing_installed(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", "1.1")
    agent, source = new_agent(repo, tmp_path)
    dev = Device(agent, source, repo)
    agent.store.ensure()
    dev.stage("1.1")
    agent.store.point_current("1.1")
    dev.journal(State.SWITCHED, installed=None)
    outcome = agent.resume()
    assert outcome is not None
    assert (outcome.result, outcome.version) == (Result.NOTHING, None)
    assert not agent.store.layout.current.is_symlink()


def test_resume_a_blamed_roll_back(device: Device) -> None:
    device.stage("1.1")
    device.agent.store.point_current("1.1")
    device.journal(State.ROLLING_BACK, blame=True, reason="health command exited 4")
    outcome = device.agent.resume()
    assert outcome is not None
    assert (outcome.result, outcome.version) == (Result.ROLLED_BACK, "1.0")
    assert_installed(device.agent, device.repo, "1.0")
    assert device.agent.store.failed() == {"1.1": "health command exited 4"}


@pytest.mark.parametrize(("state", "result", "history"), [
    (State.COMMITTED, Result.INSTALLED, "committed"),
    (State.ROLLED_BACK, Result.ROLLED_BACK, "rolled-back"),
    (State.FAILED, Result.FAILED, "failed"),
])
def test_resume_a_finished_cycle_records_it(device: Device, state: State, result: Result,
                                            history: str) -> None:
    if state is State.COMMITTED:
        device.stage("1.1")
        device.agent.store.point_current("1.1")
    device.journal(state, blame=True, reason="whatever happened")
    outcome = device.agent.resume()
    assert outcome is not None
    assert outcome.result is result
    assert (last(device.agent)["update_id"], last(device.agent)["result"]) == ("crashed-run",
                                                                              history)
    assert device.agent.store.load_journal().state is State.IDLE


def test_resume_an_interrupted_rollback(device: Device) -> None:
    device.agent.update()  # 1.1 installed, 1.0 kept
    device.agent.store.save_journal(Journal(
        state=State.ROLLING_BACK, kind=Kind.ROLLBACK, update_id="rb", app=APP,
        installed="1.1", target="1.0", restore="1.0", reason="rolled back by the operator",
        blame=True))
    outcome = device.agent.resume()
    assert outcome is not None
    assert (outcome.result, outcome.version) == (Result.REVERTED, "1.0")
    assert_installed(device.agent, device.repo, "1.0")


def test_a_corrupt_journal_stops_the_agent(device: Device) -> None:
    (device.agent.store.layout.state / "journal.json").write_text("{")
    with pytest.raises(StateError, match="journal is corrupt"):
        device.agent.update()
    assert_installed(device.agent, device.repo, "1.0")


# -- status, history, check ----------------------------------------------------------------


def test_status(make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", ("2.0", {"update_type": UpdateType.MAJOR}))
    agent, _ = new_agent(repo, tmp_path)
    status = agent.status()
    assert {"version", "state", "last_check", "pending"} <= set(status)
    assert (status["version"], status["state"], status["last_check"], status["pending"]) == (
        None, "idle", None, None)
    agent.update(wanted="1.0")
    check = agent.check()
    assert (check.installed, check.available, check.decision) == ("1.0", "2.0", "defer")
    status = agent.status()
    assert (status["version"], status["state"]) == ("1.0", "idle")
    assert status["last_check"] is not None
    datetime.fromisoformat(status["last_check"])
    assert status["pending"]["version"] == "2.0"
    assert status["pending"]["type"] == "major"
    assert "install only on request" in status["pending"]["reason"]
    assert status["kept"] == ["1.0"]
    assert status["device_id"] == "device-0001"
    assert status["mode"] == "static"
    json.dumps(status)
    assert agent.update(wanted="2.0").result is Result.INSTALLED
    assert agent.status()["pending"] is None


def test_status_during_an_interrupted_update(device: Device) -> None:
    device.journal(State.STAGED)
    status = device.agent.status()
    assert status["state"] == "staged"
    assert status["update"] == {"kind": "update", "from": "1.0", "to": "1.1",
                                "started_at": status["update"]["started_at"],
                                "reason": "minor update"}


def test_check_reports_an_available_update(device: Device) -> None:
    result = device.agent.check()
    assert (result.installed, result.available, result.decision) == ("1.0", "1.1", "install")
    assert result.update_available
    device.agent.update()
    result = device.agent.check()
    assert (result.available, result.decision, result.reason) == (None, "none", "up to date")


def test_history_records_each_outcome_with_its_reason(
        make_repo: Callable[..., SampleRepo], tmp_path: Path) -> None:
    repo = make_repo("1.0", ("1.1", {"health_exit": 5}), "1.2")
    agent, source = new_agent(repo, tmp_path)
    agent.update(wanted="1.0")
    agent.update(wanted="1.1")
    source.fail_downloads.add("1.2")
    agent.update()
    rows = [(r["kind"], r["result"], r["from"], r["attempted"], r["to"])
            for r in agent.history()]
    assert rows == [("update", "committed", None, "1.0", "1.0"),
                    ("update", "rolled-back", "1.0", "1.1", "1.0"),
                    ("update", "failed", "1.0", "1.2", "1.0")]
    reasons = [r["reason"] for r in agent.history()]
    assert reasons[0] == "requested by the operator"
    assert "exited 5" in reasons[1]
    assert "connection reset" in reasons[2]
    for record in agent.history():
        assert record["finished_at"] >= record["started_at"]


# -- verify and repair ---------------------------------------------------------------------


def test_verify_an_intact_device(device: Device) -> None:
    device.agent.update()
    report = device.agent.verify()
    assert report.checked == ["1.0", "1.1"]
    assert report.damaged == {}


def test_verify_finds_changed_missing_and_extra_files_and_repair_mends_them(
        device: Device) -> None:
    device.agent.update()
    layout = device.agent.store.layout
    new, old = layout.release_dir("1.1"), layout.release_dir("1.0")
    (new / "VERSION").write_text("9.9\n")                  # changed
    (new / "share" / "README.txt").unlink()               # missing
    (new / "bin" / "extra").write_text("dropped in")      # extra
    (old / "health.sh").chmod(0o600)                      # mode changed, kept tree
    report = device.agent.verify()
    assert report.damaged == {
        "1.0": ["health.sh"],
        "1.1": ["VERSION", "bin/extra", "share/README.txt"]}
    assert report.repaired == []
    assert (new / "VERSION").read_text() == "9.9\n"  # verify alone changes nothing
    downloads = sum(device.source.downloads.values())
    report = device.agent.verify(repair=True)
    assert sorted(report.repaired) == ["1.0", "1.1"]
    assert sum(device.source.downloads.values()) == downloads + 2
    assert device.agent.verify().damaged == {}
    assert fingerprint(new) == fingerprint(device.repo.source("1.1"))
    assert fingerprint(old) == fingerprint(device.repo.source("1.0"))
    assert_installed(device.agent, device.repo, "1.1")
    assert list(layout.downloads.iterdir()) == []


def test_repair_replaces_a_directory_where_a_file_belongs(device: Device) -> None:
    tree = device.agent.store.layout.release_dir("1.0")
    (tree / "VERSION").unlink()
    (tree / "VERSION").mkdir()
    (tree / "VERSION" / "inside").write_text("x")
    (tree / "docs").unlink()
    (tree / "docs").write_text("not a link")
    assert device.agent.verify().damaged == {"1.0": ["VERSION", "VERSION/inside", "docs"]}
    device.agent.verify(repair=True)
    assert device.agent.verify().damaged == {}
    assert fingerprint(tree) == fingerprint(device.repo.source("1.0"))


def test_a_link_out_of_a_kept_tree_is_damage_that_repair_mends(device: Device) -> None:
    tree = device.agent.store.layout.release_dir("1.0")
    (tree / "bin" / "run").unlink()
    os.symlink("/etc/passwd", tree / "bin" / "run")
    (tree / "planted").write_text("x")
    [damage] = device.agent.verify().damaged["1.0"]
    assert "points outside the tree" in damage
    device.agent.verify(repair=True)
    assert device.agent.verify().damaged == {}
    assert fingerprint(tree) == fingerprint(device.repo.source("1.0"))


def test_repair_needs_the_source(device: Device) -> None:
    (device.agent.store.layout.release_dir("1.0") / "VERSION").write_text("x")
    device.source.fail_downloads.add(".tar.zst")
    with pytest.raises(NetworkError):
        device.agent.verify(repair=True)
    assert device.agent.verify().damaged == {"1.0": ["VERSION"]}


def test_the_running_release_reports_its_health_again(make_repo: Callable[..., SampleRepo],
                                                      tmp_path: Path) -> None:
    # issue 15 §2: ``[health] interval`` re-runs the check; the daemon calls this.
    repo = make_repo("1.0")
    sink = Sink()
    source = FakeSource(repo.path)
    agent = Agent(agent_config(tmp_path / "device"), source_factory=lambda: source, sink=sink)
    assert agent.report_health() is None
    assert sink.events == []  # nothing installed: nothing to report
    agent.update()
    assert agent.report_health() is None
    report = sink.events[-1]
    assert (report.type, report.version, dict(report.details)) == (
        "health-report", "1.0", {"ok": True})
    agent.config = replace(agent.config, health=replace(agent.config.health,
                                                        command=("false",)))
    assert agent.report_health()
    report = sink.events[-1]
    assert (report.type, dict(report.details)) == ("health-report", {"ok": False})
    assert report.reason
