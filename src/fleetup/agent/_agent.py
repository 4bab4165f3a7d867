"""The agent: one object per device root that checks, updates, rolls back and verifies.

Each update or rollback is driven through the lifecycle table (``_lifecycle``). The new
state is written to the journal *before* its handler runs; a handler does its step
(idempotently) and returns the next event. A process killed at any instant leaves the
journal naming a state whose handler can simply run again, or which ``RESUME`` maps to
a safe one; the next ``update`` or ``run`` finishes the job first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from fleetup import _failpoints as failpoints
from fleetup._facts import DeltaFacts, ReleaseFacts, release_target_path
from fleetup._manifest import scan_tree
from fleetup._protocol import EventType
from fleetup._versions import parse_version
from fleetup.agent._choice import (
    Decision,
    Defer,
    DeviceView,
    Install,
    RollbackTo,
    UpToDate,
    Waiting,
    choose_channel_downgrade,
    waiting_of,
)
from fleetup.agent._config import AgentConfig
from fleetup.agent._director import (
    AgentEvent,
    Director,
    EventSink,
    LogSink,
    ReleaseSource,
    StaticDirector,
)
from fleetup.agent._health import plan_health, run_health_check, run_pre_check
from fleetup.agent._install import (
    clear_downloads,
    discard_partials,
    prune_releases,
    remove_release,
    tree_is_staged,
)
from fleetup.agent._lifecycle import (
    MAX_RESUMES,
    RESTING,
    Event,
    Journal,
    Kind,
    State,
    resumed_journal,
)
from fleetup.agent._progress import ProgressFile
from fleetup.agent._store import DeviceStore
from fleetup.agent._supervisor import CommandRestarter, NoRestarter, Restarter, restarts_app
from fleetup.errors import (
    DeltaError,
    FleetupError,
    IntegrityError,
    StateError,
    TrustError,
    UnsafeArchiveError,
    UsageError,
)

__all__ = ["Agent", "CheckResult", "Outcome", "Result", "VerifyReport"]

log = logging.getLogger("fleetup.agent")

SourceFactory = Callable[[], ReleaseSource]
ProgressFactory = Callable[[str, int], Callable[[int], None]]


class Result(StrEnum):
    NOTHING = "nothing"
    INSTALLED = "installed"
    ROLLED_BACK = "rolled-back"
    REVERTED = "reverted"      # switched back to a kept release on request (or a yank)
    FAILED = "failed"
    STOPPED = "stopped"
    STAGED = "staged"          # downloaded, verified and staged; waiting to be applied
    HELD = "held"              # staged, but the pre-update check said "not now"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an update or rollback ended. ``version`` is what is installed afterwards."""

    result: Result
    version: str | None
    target: str | None = None
    reason: str = ""
    waiting: Waiting | None = None  # a release policy holds back (nothing was done)


@dataclass(frozen=True, slots=True)
class CheckResult:
    installed: str | None
    available: str | None
    decision: str
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()
    waiting: Waiting | None = None  # available, but ``update`` will not install it now

    @property
    def update_available(self) -> bool:
        return self.available is not None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Per kept version: the paths that differ from the verified manifest."""

    damaged: dict[str, list[str]] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Agent:
    """The update engine for one device root."""

    def __init__(self, config: AgentConfig, *, source_factory: SourceFactory | None = None,
                 director: Director | None = None, sink: EventSink | None = None,
                 restarter: Restarter | None = None, progress: ProgressFactory | None = None,
                 clock: Callable[[], datetime] | None = None,
                 stop: threading.Event | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.store = DeviceStore(config.root)
        self.source_factory = source_factory or self._default_source
        self.director: Director = director or StaticDirector(config.policy)
        self.sink: EventSink = sink or LogSink()
        self.restarter: Restarter = restarter or self._default_restarter()
        self.progress = progress
        self.clock = clock or (lambda: datetime.now(UTC))
        self.stop = stop or threading.Event()
        # The health check's seams: how long it waits (start-up grace, URL polls).
        self.monotonic = monotonic
        self.sleep = sleep
        self._source: ReleaseSource | None = None
        self._factory: SourceFactory = self.source_factory
        self.progress_file = ProgressFile(self.store.layout.state / "progress.json")

    # -- construction helpers --------------------------------------------------------

    def _default_source(self) -> ReleaseSource:
        from fleetup.agent._trust import TufReleaseSource

        config = replace(self.config, repo_url=self.config.release_url)
        return TufReleaseSource.from_config(config, self.store.layout)

    @contextlib.contextmanager
    def _private_source(self) -> Iterator[SourceFactory]:
        """A source for a check beside another agent: it starts from a copy of the
        device's trusted metadata and writes only to that copy, so nothing the other
        agent persists is ever overwritten (with older metadata, or half of a set).
        Replayed metadata is still refused: the copy is what the device trusts."""
        if self.source_factory != self._default_source:
            yield self.source_factory  # a source passed in (tests): used as it is
            return
        from fleetup.agent._trust import TufReleaseSource

        config = replace(self.config, repo_url=self.config.release_url)
        with tempfile.TemporaryDirectory(prefix="fleetup-check-") as tmp:
            private = DeviceStore(Path(tmp)).layout
            _copy_metadata(self.store.layout.tuf, private.tuf)
            yield lambda: TufReleaseSource.from_config(config, private)

    def _default_restarter(self) -> Restarter:
        command = self.config.process.restart_command
        if command:
            return CommandRestarter(command, self.config.root, self.app_env)
        return NoRestarter()

    def app_env(self) -> dict[str, str]:
        """The environment the app, its restart command and its health check run in."""
        env = dict(os.environ)
        env.update(self.config.process.env)
        env.update(FLEETUP_ROOT=str(self.config.root), FLEETUP_DATA=str(self.store.layout.data),
                   FLEETUP_APP=self.config.app)
        installed = self.store.installed_version()
        if installed:
            env["FLEETUP_VERSION"] = installed
        return env

    def device_view(self) -> DeviceView:
        return DeviceView(
            device_id=self.config.device_id or self.store.device_id(), app=self.config.app,
            platform=self.config.platform, channel=self.channel(),
            installed=self.store.installed_version(), kept=self.store.kept_versions(),
            failed=self.store.failed())

    def channel(self) -> str:
        """The effective channel: set on the device (``agent channel``), else the config's."""
        return self.store.channel_override() or self.config.channel

    def downgrade(self) -> Outcome:
        """Install the newest release of this device's channel even if it is older than
        the installed one: an operator's deliberate choice (``agent channel NAME
        --downgrade``), signed facts still enforced (:func:`choose_channel_downgrade`).

        Raises:
            UsageError: the channel has no release this device can install.
            NetworkError, TrustError: the signed metadata could not be read.
            StateError: another agent holds the lock.
        """
        with self.cycle():
            resumed = self.resume()
            if resumed is not None and resumed.result is Result.STOPPED:
                return resumed
            device = self.device_view()
            source = self._lazy_source()
            decision = choose_channel_downgrade(source.releases(device.app, device.platform),
                                                device)
            if isinstance(decision, Install) and decision.facts is not None:
                return self._run(self._begin_update(device, decision.facts, decision))
            if isinstance(decision, RollbackTo):
                return self._run(self._begin_rollback(device.installed, decision.version,
                                                      decision.reason, blame_installed=False))
            return Outcome(Result.NOTHING, device.installed, reason=decision.reason)

    def _fresh_source(self) -> ReleaseSource:
        """A source refreshed for this cycle (python-tuf refreshes once per Updater)."""
        if self._source is None:
            source = self._factory()
            source.refresh()
            self._source = source
        return self._source

    def _lazy_source(self) -> ReleaseSource:
        """The cycle's source, refreshed only when a decision first reads it (a fleet
        check-in answered "nothing to do" then costs no metadata round trip)."""
        return _LazySource(self._fresh_source)

    @contextlib.contextmanager
    def cycle(self) -> Iterator[None]:
        """One locked session: fresh metadata at most once, dropped afterwards."""
        with self.store.lock(), self._session(self.source_factory):
            yield

    @contextlib.contextmanager
    def _session(self, factory: SourceFactory) -> Iterator[None]:
        self._source = None
        self._factory = factory
        try:
            yield
        finally:
            source, self._source = self._source, None
            self._factory = self.source_factory
            close = getattr(source, "close", None)
            if callable(close):
                close()  # the source owns an httpx client
            self.sink.flush()

    # -- public operations -----------------------------------------------------------

    def check(self, wanted: str | None = None) -> CheckResult:
        """Is there a release to install (or would ``wanted`` install on purpose)?
        Records the answer for ``status``.

        Read-only beside another agent (a running daemon holds the lock): the check then
        works on a private copy of the trusted metadata and records nothing; the daemon
        records its own checks.

        Raises:
            NetworkError, TrustError, StateError: nothing was decided.
            UsageError: ``wanted`` is not a release that can be installed here.
        """
        with self.store.lock_if_free() as mine:
            if mine:
                with self.cycle():
                    return self._check(wanted)
        log.info("another agent is working on %s: checking without changing anything",
                 self.config.root)
        with self._private_source() as factory, self._session(factory):
            return self._check(wanted, record=False)

    def _check(self, wanted: str | None = None, record: bool = True) -> CheckResult:
        device = self.device_view()
        decision = self.director.decide(device, self._lazy_source(), self.clock(), wanted)
        result = _check_result(device.installed, decision)
        if record:
            self._record_check(decision)
        self.sink.emit(AgentEvent("check", version=result.available,
                                  from_version=device.installed, reason=result.reason))
        return result

    def update(self, wanted: str | None = None, *, download_only: bool = False) -> Outcome:
        """One whole cycle: finish an interrupted one, decide, install or roll back.

        With ``download_only`` the cycle stops once the release is staged (``ready``);
        :meth:`apply` switches to it later. A release staged before is applied when it
        is still the one to install (unless ``download_only``), dropped when it is not.

        Raises:
            NetworkError, TrustError: the check itself failed; nothing changed.
            StateError: another agent holds the lock, or the journal is corrupt.
        """
        with self.cycle():
            return self._update(wanted, download_only)

    def _update(self, wanted: str | None, download_only: bool = False) -> Outcome:
        resumed = self.resume()
        if resumed is not None and resumed.result is Result.STOPPED:
            return resumed
        device = self.device_view()
        decision = self.director.decide(device, self._lazy_source(), self.clock(), wanted)
        self._record_check(decision)
        staged = self._after_staged(decision, download_only)
        if staged is not None:
            return staged
        device = self.device_view()
        if isinstance(decision, Install) and decision.facts is not None:
            outcome = self._run(self._begin_update(device, decision.facts, decision,
                                                   hold=download_only))
        elif isinstance(decision, RollbackTo):
            outcome = self._run(self._begin_rollback(device.installed, decision.version,
                                                     decision.reason, blame_installed=False,
                                                     retire=decision.retire))
        else:
            outcome = Outcome(Result.NOTHING, device.installed, reason=decision.reason,
                              waiting=waiting_of(decision))
            if self.config.keep_days is not None:  # trees age while nothing new comes
                prune_releases(self.store, self.config.keep, self.config.keep_days,
                               self.clock())
        if outcome.result is Result.NOTHING and resumed is not None:
            return resumed
        return outcome

    def rollback(self, to: str | None = None) -> Outcome:
        """Switch back to a kept release (the newest older one by default).

        The version rolled back from is not installed again by itself; a newer
        release is, and ``update --version`` can insist.

        Raises:
            UsageError: no such kept release, or nothing to roll back to.
            StateError: another agent holds the lock.
        """
        with self.cycle():
            resumed = self.resume()
            if resumed is not None and resumed.result is Result.STOPPED:
                return resumed
            installed = self.store.installed_version()
            kept = self._rollback_targets()
            target = to or self._previous_kept(installed, kept)
            if target not in kept:
                raise UsageError(f"{target} is not a kept release here "
                                 f"(kept: {', '.join(kept) or 'none'})")
            if target == installed:
                return Outcome(Result.NOTHING, installed, reason=f"{target} is installed")
            staged = self._staged()
            if staged is not None:  # the journal is the rollback's now
                self._drop_staged(staged, "rolled back by the operator")
            reason = "rolled back by the operator"
            return self._run(self._begin_rollback(installed, target, reason,
                                                  blame_installed=True))

    def _rollback_targets(self) -> list[str]:
        """Kept releases, less one staged and never run (applying it is no rollback)."""
        staged = self._staged()
        fresh = staged.target if staged is not None and staged.artifact != "kept" else None
        return [v for v in self.store.kept_versions() if v != fresh]

    def _previous_kept(self, installed: str | None, kept_now: list[str]) -> str:
        kept = [v for v in kept_now if v != installed]
        if installed is None or not kept:
            raise UsageError("no other kept release to roll back to")
        current = parse_version(installed)
        older = [v for v in kept if parse_version(v) < current]
        return (older or kept)[-1]

    # -- staged releases: download now, apply later ---------------------------------

    def apply(self) -> Outcome:
        """Switch to the staged release: no network, health-gated like any update.

        Raises:
            UsageError: nothing is staged.
            StateError: another agent holds the lock, or the journal is corrupt.
        """
        with self.cycle():
            resumed = self.resume()  # an apply killed half way finishes first
            if resumed is not None and resumed.result is Result.STOPPED:
                return resumed
            staged = self._staged()
            if staged is not None:
                return self._run(self._begin_apply(staged, "applied on request"))
            if resumed is not None:
                return resumed
            raise UsageError("nothing is staged to apply (`agent update --download-only` "
                             "stages a release)")

    def staged_version(self) -> str | None:
        """The version staged and waiting to be applied, or ``None``."""
        staged = self._staged()
        return None if staged is None else staged.target

    def _staged(self) -> Journal | None:
        journal = self.store.load_journal()
        return journal if journal.state is State.READY else None

    def _after_staged(self, decision: Decision, download_only: bool) -> Outcome | None:
        """A staged release meets this cycle's decision: still the one to install →
        applied (or, ``download_only`` and never told to apply, left waiting); another
        release, none, or a rollback → dropped. ``None``: the cycle goes on."""
        staged = self._staged()
        if staged is None:
            return None
        facts = decision.facts if isinstance(decision, Install) else None
        if facts is not None and facts.version == staged.target:
            if download_only and staged.hold:  # once told to apply, a held one is retried
                return _waiting_outcome(staged, self.store.installed_version())
            return self._run(self._begin_apply(staged, decision.reason))
        if not isinstance(decision, Defer):  # waiting for a window keeps what is staged
            self._drop_staged(staged, decision.reason)
        return None

    def _begin_apply(self, j: Journal, reason: str) -> Journal:
        return self._advance(j, Event.APPLY, hold=False, held="", resumed=0, reason=reason)

    def _drop_staged(self, j: Journal, why: str) -> None:
        """Forget a staged release that is no longer wanted. The journal goes first: a
        crash before the tree is gone leaves a kept tree, never a journal without one."""
        self._advance(j, Event.DISCARDED)
        self.store.save_journal(Journal(updated_at=_now_iso()))
        if j.artifact != "kept" and j.target:  # a tree kept before this cycle stays
            remove_release(self.store, j.target)
        log.info("dropped the staged %s %s: %s", j.app, j.target, why)

    def _pre_check(self, j: Journal) -> str | None:
        """Run ``[health] pre_command``; why the switch must wait, or ``None``."""
        cwd = self.store.layout.current
        env = {**self.app_env(), "FLEETUP_TARGET_VERSION": j.target or ""}
        held = run_pre_check(self.config.health.pre_command,
                             cwd=cwd if cwd.is_dir() else self.config.root, env=env,
                             timeout=self.config.health.timeout or 30.0)
        if held is not None:
            log.info("update to %s held back: %s", j.target, held)
            self.sink.emit(AgentEvent(str(EventType.UPDATE_HELD), version=j.target,
                                      from_version=j.installed, update_id=j.update_id,
                                      rollout_id=j.rollout_id, reason=held,
                                      details={"by": "pre-check"}))
        return held

    def resume(self) -> Outcome | None:
        """Finish a cycle a killed process left behind; ``None`` if there was none."""
        journal = self.store.load_journal()
        if journal.state is State.IDLE:
            discard_partials(self.store)
            return None
        if journal.state is State.READY:
            return None  # staged and waiting: nothing was interrupted
        log.warning("resuming an interrupted %s of %s in state %s", journal.kind,
                    journal.target, journal.state)
        given_up = journal.resumed >= MAX_RESUMES
        journal = resumed_journal(journal, _now_iso())
        self.store.save_journal(journal)  # counted before it runs: a crash counts too
        if given_up:
            log.error("the interrupted update: %s", journal.reason)
        return self._run(journal)

    # -- the driver ------------------------------------------------------------------

    def _begin_update(self, device: DeviceView, facts: ReleaseFacts,
                      decision: Install, hold: bool = False) -> Journal:
        journal = Journal(
            kind=Kind.UPDATE, update_id=uuid.uuid4().hex, app=self.config.app,
            installed=device.installed, target=facts.version, restore=device.installed,
            release=facts.to_custom(), reason=decision.reason, on_purpose=decision.on_purpose,
            rollout_id=getattr(self.director, "rollout_id", None), retire=decision.retire,
            started_at=_now_iso(), hold=hold)
        return self._advance(journal, Event.BEGIN)

    def _begin_rollback(self, installed: str | None, target: str, reason: str,
                        blame_installed: bool, retire: str | None = None) -> Journal:
        journal = Journal(kind=Kind.ROLLBACK, update_id=uuid.uuid4().hex, app=self.config.app,
                          installed=installed, target=target, restore=target, reason=reason,
                          blame=blame_installed, retire=retire, started_at=_now_iso())
        self.sink.emit(AgentEvent("rollback", version=target, from_version=installed,
                                  update_id=journal.update_id, reason=reason))
        return self._advance(journal, Event.ROLLBACK_REQUESTED)

    def _advance(self, journal: Journal, event: Event, **changes: Any) -> Journal:
        new = journal.advance(event, _now_iso(), **changes)
        self.store.save_journal(new)
        failpoints.hit(f"state:{new.state}")
        return new

    def _run(self, journal: Journal) -> Outcome:
        handlers: Mapping[State, Callable[[Journal], Journal]] = {
            State.DOWNLOADING: self._download, State.VERIFIED: self._stage,
            State.STAGED: self._switch, State.SWITCHED: self._restart,
            State.HEALTH_CHECKING: self._check_health, State.COMMITTED: self._record,
            State.FAILED: self._record, State.ROLLING_BACK: self._roll_back,
            State.ROLLED_BACK: self._record,
        }
        ended = journal
        while journal.state not in RESTING:
            if self.stop.is_set() and journal.state in _ABANDON_ON_STOP:
                log.info("stopping: leaving the %s of %s to resume later", journal.state,
                         journal.target)
                return Outcome(Result.STOPPED, self.store.installed_version(), journal.target,
                               "stopped before the update finished; it resumes next time")
            ended = journal
            journal = handlers[journal.state](journal)
        if journal.state is State.READY:
            return _waiting_outcome(journal, self.store.installed_version())
        return _outcome(ended, self.store.installed_version())

    # -- handlers: each does its step and returns the journal after the next event ---

    def _download(self, j: Journal) -> Journal:
        facts = ReleaseFacts.from_custom(j.release, j.target or "")
        self.sink.emit(AgentEvent("download-started", version=j.target, from_version=j.installed,
                                  update_id=j.update_id, rollout_id=j.rollout_id))
        try:
            source = self._fresh_source()
            artifact, path = self._fetch(source, facts, j)
        except FleetupError as e:
            self.progress_file.clear()
            kind = "verify-failed" if _is_trust(e) else "download-failed"
            self.sink.emit(AgentEvent(kind, version=j.target, from_version=j.installed,
                                      update_id=j.update_id, rollout_id=j.rollout_id,
                                      reason=str(e)))
            return self._advance(j, Event.DOWNLOAD_FAILED, reason=str(e))
        self.progress_file.clear()
        size = path.stat().st_size if path.exists() else 0
        self.sink.emit(AgentEvent("download-finished", version=j.target, from_version=j.installed,
                                  update_id=j.update_id, rollout_id=j.rollout_id,
                                  details={"artifact": artifact, "bytes": size}))
        return self._advance(j, Event.DOWNLOADED, artifact=artifact, artifact_path=str(path))

    def _fetch(self, source: ReleaseSource, facts: ReleaseFacts, j: Journal) -> tuple[str, Path]:
        if tree_is_staged(self.store, facts):
            return "kept", self.store.layout.release_dir(facts.version)
        downloads = self.store.layout.downloads
        base = j.installed
        if (self.config.download.deltas and j.artifact != "full" and base is not None
                and base in self.store.kept_versions()):
            found = source.delta(facts.app, facts.platform, base, facts.version)
            if found is not None and not _can_apply(found[0]):
                log.info("skipping the delta from %s: it needs %s", base,
                         ", ".join(found[0].requires) or found[0].method)
                found = None
            if found is not None and found[1] < source.release_length(facts):
                delta, length = found
                label = f"delta {base} → {facts.version}"
                try:
                    path = source.download(delta.target_path,
                                           downloads / _file_name(delta.target_path),
                                           self._progress(label, length, "delta"))
                    return f"delta:{base}", path
                except FleetupError as e:
                    log.warning("delta download failed (%s); using the full archive", e)
        length = source.release_length(facts)
        # Unpack while downloading; the result counts only if python-tuf verifies the
        # archive and the tree is the signed one (else the stage step unpacks the file).
        from fleetup.agent._stage import StreamingUnpack

        unpack = StreamingUnpack(self.store, facts)
        try:
            path = source.download(facts.target_path, downloads / _file_name(facts.target_path),
                                   self._progress(f"{facts.app} {facts.version}", length,
                                                  "full"),
                                   tee=unpack)
        except BaseException:
            unpack.discard()
            raise
        if unpack.accept():
            log.debug("%s %s was unpacked while it downloaded", facts.app, facts.version)
        return "full", path

    def _progress(self, label: str, total: int, artifact: str) -> Callable[[int, int], None]:
        """The download's progress: to the progress file (for ``status``), and to the
        progress bar when there is one."""
        to_file = self.progress_file.reporter("downloading", artifact)
        to_file(0, total)
        if self.progress is None:
            return to_file
        advance = self.progress(label, total)
        seen = [0]

        def report(done: int, total_now: int) -> None:
            to_file(done, total_now)
            if done > seen[0]:
                advance(done - seen[0])
                seen[0] = done

        return report

    def _stage(self, j: Journal) -> Journal:
        facts = ReleaseFacts.from_custom(j.release, j.target or "")
        artifact = j.artifact or "full"
        path = Path(j.artifact_path or "")
        try:
            # Unpacking code (tar, zstd, bsdiff) is loaded only when there is something
            # to unpack: a resting daemon does not carry it.
            from fleetup.agent._stage import stage_archive, stage_delta

            if artifact.startswith("delta:"):
                try:
                    stage_delta(self.store, facts, path, artifact.partition(":")[2])
                except (DeltaError, IntegrityError, UnsafeArchiveError, StateError) as e:
                    log.warning("delta did not apply (%s); falling back to the full archive", e)
                    return self._advance(j, Event.DELTA_FAILED, artifact="full",
                                         artifact_path=None)
            elif artifact == "full":
                stage_archive(self.store, facts, path)
        except FleetupError as e:
            self.sink.emit(AgentEvent("verify-failed" if _is_trust(e) else "error",
                                      version=j.target, from_version=j.installed,
                                      update_id=j.update_id, rollout_id=j.rollout_id,
                                      reason=str(e)))
            return self._advance(j, Event.STAGE_FAILED, reason=str(e))
        self.sink.emit(AgentEvent("staged", version=j.target, update_id=j.update_id,
                                  rollout_id=j.rollout_id))
        return self._advance(j, Event.STAGED, staged_at=_now_iso())

    def _switch(self, j: Journal) -> Journal:
        if j.hold:
            log.info("%s %s is staged; it is applied on `agent apply`", j.app, j.target)
            return self._advance(j, Event.HOLD)
        held = self._pre_check(j)
        if held is not None:
            return self._advance(j, Event.PRE_CHECK_FAILED, held=held)
        try:
            self.store.point_current(j.target)
        except FleetupError as e:
            return self._advance(j, Event.SWITCH_FAILED, reason=str(e))
        self.sink.emit(AgentEvent("switched", version=j.target, from_version=j.installed,
                                  update_id=j.update_id, rollout_id=j.rollout_id))
        return self._advance(j, Event.SWITCHED)

    def _restart(self, j: Journal) -> Journal:
        try:
            self.restarter.restart()
        except FleetupError as e:
            return self._advance(j, Event.RESTART_FAILED, reason=str(e), blame=True)
        return self._advance(j, Event.RESTARTED)

    def _check_health(self, j: Journal) -> Journal:
        facts = ReleaseFacts.from_custom(j.release, j.target or "")
        plan = plan_health(facts.health, self.config.health,
                           app_restarted=restarts_app(self.restarter))
        reason = run_health_check(plan, cwd=self.store.layout.current, env=self.app_env(),
                                  app=self.restarter, clock=self.monotonic, sleep=self.sleep)
        if reason is None:
            self.sink.emit(AgentEvent("health-passed", version=j.target, from_version=j.installed,
                                      update_id=j.update_id, rollout_id=j.rollout_id))
            return self._advance(j, Event.HEALTH_PASSED)
        self.sink.emit(AgentEvent("health-failed", version=j.target, from_version=j.installed,
                                  update_id=j.update_id, rollout_id=j.rollout_id, reason=reason))
        return self._advance(j, Event.HEALTH_FAILED, reason=reason, blame=True)

    def report_health(self) -> str | None:
        """Re-run the running release's health check and report it (``health-report``,
        ``details.ok``): the fleet compares devices on a new release with those still on
        the old one. Returns why it failed (``None``: healthy, or nothing installed)."""
        installed = self.store.installed_version()
        if installed is None:
            return None
        try:
            signed = self.store.load_manifest(installed)[1].health
        except FleetupError:  # no manifest kept (an old install): the local check only
            signed = None
        plan = plan_health(signed, self.config.health, app_restarted=False)
        reason = run_health_check(plan, cwd=self.store.layout.current, env=self.app_env(),
                                  app=self.restarter, clock=self.monotonic, sleep=self.sleep)
        self.sink.emit(AgentEvent(EventType.HEALTH_REPORT, version=installed,
                                  reason=reason or "", details={"ok": reason is None}))
        return reason

    def _roll_back(self, j: Journal) -> Journal:
        restore = self._restorable(j)
        self.store.point_current(restore)
        failpoints.hit("rollback:switched")
        try:
            self.restarter.restart()
        except FleetupError as e:
            log.error("the restored version %s did not restart: %s", restore, e)
        if j.kind is Kind.UPDATE and j.blame and j.target:
            self.store.mark_failed(j.target, j.reason)
            remove_release(self.store, j.target)
        elif j.kind is Kind.ROLLBACK and j.blame and j.installed:
            self.store.mark_failed(j.installed, j.reason)
        if j.retire and j.retire != restore:
            remove_release(self.store, j.retire)
        return self._advance(j, Event.ROLLED_BACK, restore=restore)

    def _restorable(self, j: Journal) -> str | None:
        """The version to go back to: the journal's, or — if that tree has gone (removed
        by hand) — the newest other kept release, so a rollback can never get stuck."""
        kept = self.store.kept_versions()
        if j.restore is None or j.restore in kept:
            return j.restore
        others = [v for v in kept if v != j.target]
        log.error("release %s is no longer kept; rolling back to %s instead", j.restore,
                  others[-1] if others else j.target)
        return others[-1] if others else j.target

    def _record(self, j: Journal) -> Journal:
        """Terminal states: write history, tidy up, report, return to idle."""
        result = {State.COMMITTED: "committed", State.FAILED: "failed",
                  State.ROLLED_BACK: "rolled-back"}[j.state]
        if j.state is State.COMMITTED:
            self.store.clear_failed(j.target or "")
            if j.retire and j.retire != j.target:
                remove_release(self.store, j.retire)
            prune_releases(self.store, self.config.keep, self.config.keep_days, self.clock())
        if j.state is not State.FAILED:
            clear_downloads(self.store)
        else:
            clear_downloads(self.store, keep_partial=True)
            discard_partials(self.store)
        self.store.append_history({
            "update_id": j.update_id, "kind": j.kind.value, "result": result,
            # "to": what runs afterwards (a failed update changed nothing).
            "from": j.installed, "to": {State.COMMITTED: j.target, State.ROLLED_BACK: j.restore
                                        }.get(j.state, j.installed),
            "attempted": j.target, "reason": j.reason,
            "artifact": j.artifact, "started_at": j.started_at, "finished_at": _now_iso(),
            "rollout_id": j.rollout_id})
        if j.state is State.COMMITTED:
            self.sink.emit(AgentEvent("committed", version=j.target, from_version=j.installed,
                                      update_id=j.update_id, rollout_id=j.rollout_id))
        elif j.state is State.ROLLED_BACK:
            self.sink.emit(AgentEvent("rolled-back", version=j.restore, from_version=j.target,
                                      update_id=j.update_id, rollout_id=j.rollout_id,
                                      reason=j.reason))
        failpoints.hit("record:history-written")
        if j.state is not State.FAILED:  # a failed download is retried: still pending
            self._clear_pending(j)
        idle = Journal(updated_at=_now_iso())
        self.store.save_journal(idle)
        log.info("%s %s: %s%s", j.kind, j.target, result, f" ({j.reason})" if j.reason else "")
        return idle

    # -- status and history ----------------------------------------------------------

    def _record_check(self, decision: Decision) -> None:
        status = self.store.load_status()
        status["last_check"] = _now_iso()
        pending = decision.facts if isinstance(decision, Install | Defer) else None
        status["pending"] = None if pending is None else {
            "version": pending.version, "type": pending.update_type.value,
            "reason": decision.reason, "notes": pending.notes}
        status["not_offered"] = [{"version": v, "reason": r} for v, r in decision.skipped]
        status["last_decision"] = decision.reason
        status["running_yanked"] = decision.running_yanked
        waiting = waiting_of(decision)
        status["waiting"] = None if waiting is None else waiting.to_dict()
        self.store.save_status(status)

    def _clear_pending(self, j: Journal) -> None:
        status = self.store.load_status()
        pending = status.get("pending")
        if isinstance(pending, dict) and pending.get("version") == j.target \
                and j.kind is Kind.UPDATE:
            status["pending"] = None
            self.store.save_status(status)

    def status(self) -> dict[str, Any]:
        """What ``status --json`` prints: version, state, last_check, pending, and more."""
        journal = self.store.load_journal()
        saved = self.store.load_status()
        failed = self.store.failed()
        device_id = self.config.device_id or self.store.device_id()
        body: dict[str, Any] = {
            "app": self.config.app, "device_id": device_id,
            "mode": "fleet" if self.config.fleet_mode else "static",
            "channel": self.channel(), "platform": self.config.platform,
            # "device" when set by `agent channel NAME`, else "config" (the default).
            "channel_source": "config" if self.store.channel_override() is None
            else "device",
            "version": self.store.installed_version(), "state": journal.state.value,
            "last_check": saved.get("last_check"), "pending": saved.get("pending"),
            "kept": self.store.kept_versions(),
            "failed": [{"version": v, "reason": r} for v, r in failed.items()],
            "not_offered": saved.get("not_offered", []),
            # Why the installed release is yanked and stays (nowhere its policy allows
            # to go), or null.
            "running_yanked": saved.get("running_yanked"),
            "waiting": saved.get("waiting"),
            "apply": self.config.policy.apply,
            **self._staged_status(journal),
        }
        if journal.state is not State.IDLE:
            body["update"] = {"kind": journal.kind.value, "from": journal.installed,
                              "to": journal.target, "started_at": journal.started_at,
                              "reason": journal.reason}
        return body

    def _staged_status(self, journal: Journal) -> dict[str, Any]:
        """``staged`` (waiting to be applied), ``held`` (by the pre-update check) and
        ``progress`` (of the download under way), each null when there is none."""
        ready = journal.state is State.READY
        progress: dict[str, Any] | None = None
        if journal.state is State.DOWNLOADING:
            progress = self.progress_file.read() or {"step": "downloading", "done": 0,
                                                     "total": None}
        elif journal.state is State.VERIFIED:
            progress = {"step": "staging"}
        return {
            "staged": {"version": journal.target, "since": journal.staged_at or
                       journal.updated_at} if ready else None,
            "held": {"by": "pre-check", "reason": journal.held, "since": journal.updated_at}
            if ready and journal.held else None,
            "progress": progress,
        }

    def history(self) -> list[dict[str, Any]]:
        return self.store.history()

    # -- verify ----------------------------------------------------------------------

    def verify(self, repair: bool = False) -> VerifyReport:
        """Re-hash every kept tree against the manifest verified at install time (itself
        checked against the signed digest); with ``repair``, re-fetch damaged trees.

        Only ``repair`` changes anything, so only it takes the lock: a plain verify runs
        beside a daemon, and a tree the daemon removes meanwhile is simply not reported.

        Raises:
            StateError: (``repair``) another agent holds the lock; a manifest is missing.
            NetworkError, TrustError: a repair download failed.
        """
        if not repair:
            return self._verify(repair=False)
        with self.cycle():
            return self._verify(repair=True)

    def _verify(self, repair: bool) -> VerifyReport:
        report = VerifyReport()
        for version in self.store.kept_versions():
            try:
                damaged = self._damage(version)
            except StateError:
                if version in self.store.kept_versions():
                    raise
                continue  # removed by an agent at work beside this one
            if damaged and version not in self.store.kept_versions():
                continue
            report.checked.append(version)
            if damaged:
                report.damaged[version] = damaged
                if repair:
                    self._repair(version)
                    report.repaired.append(version)
        return report

    def _damage(self, version: str) -> list[str]:
        manifest, facts = self.store.load_manifest(version)
        if manifest.digest() != facts.tree_digest:
            return ["(verified manifest does not match the signed digest)"]
        try:
            actual = scan_tree(self.store.layout.release_dir(version))
        except FleetupError as e:
            return [str(e)]
        return actual.diff(manifest)

    def _repair(self, version: str) -> None:
        from fleetup.agent._repair import repair_tree

        _, facts = self.store.load_manifest(version)
        source = self._fresh_source()
        path = source.download(facts.target_path, self.store.layout.downloads /
                               _file_name(release_target_path(facts.app, facts.platform,
                                                              facts.version)))
        try:
            repair_tree(self.store, facts, path)
        finally:
            clear_downloads(self.store)


class _LazySource:
    """A :class:`ReleaseSource` that asks for the real (refreshed) one on first use."""

    def __init__(self, get: Callable[[], ReleaseSource]) -> None:
        self._get = get

    def refresh(self) -> None:
        self._get()

    def releases(self, app: str, platform: str) -> list[ReleaseFacts]:
        return self._get().releases(app, platform)

    def delta(self, app: str, platform: str, from_version: str, to_version: str
              ) -> tuple[DeltaFacts, int] | None:
        return self._get().delta(app, platform, from_version, to_version)

    def release_length(self, facts: ReleaseFacts) -> int:
        return self._get().release_length(facts)

    def download(self, target_path: str, dest: Path,
                 progress: Callable[[int, int], None] | None = None,
                 tee: Callable[[int, bytes], None] | None = None) -> Path:
        return self._get().download(target_path, dest, progress, tee)


_ABANDON_ON_STOP = frozenset({State.DOWNLOADING, State.VERIFIED, State.STAGED})


def _can_apply(delta: DeltaFacts) -> bool:
    from fleetup._delta import applicable  # delta code loads only when updating

    return applicable(delta.method, delta.requires)


def _copy_metadata(trusted: Path, dest: Path) -> None:
    """Copy the trusted metadata files; python-tuf replaces each atomically, so each copy
    is whole (a file replaced meanwhile is simply re-verified or fetched again)."""
    dest.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        for path in trusted.glob("*.json"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                shutil.copyfile(path, dest / path.name)


def _file_name(target_path: str) -> str:
    return target_path.replace("/", "_")


def _is_trust(error: FleetupError) -> bool:
    return isinstance(error, TrustError | UnsafeArchiveError)


def _check_result(installed: str | None, decision: Decision) -> CheckResult:
    if isinstance(decision, Install | Defer) and decision.facts is not None:
        kind = "install" if isinstance(decision, Install) else "defer"
        return CheckResult(installed, decision.facts.version, kind, decision.reason,
                           decision.skipped, waiting_of(decision))
    if isinstance(decision, RollbackTo):
        return CheckResult(installed, decision.version, "rollback", decision.reason,
                           decision.skipped)
    assert isinstance(decision, UpToDate | Decision)
    return CheckResult(installed, None, "none", decision.reason, decision.skipped)


def _waiting_outcome(ready: Journal, installed: str | None) -> Outcome:
    """A cycle that ended staged and waiting: held by the pre-check, or on purpose."""
    if ready.held:
        return Outcome(Result.HELD, installed, ready.target, f"held: {ready.held}")
    return Outcome(Result.STAGED, installed, ready.target,
                   f"{ready.target} is staged; `agent apply` switches to it")


def _outcome(last: Journal, installed: str | None) -> Outcome:
    if last.state is State.COMMITTED:
        return Outcome(Result.INSTALLED, installed, last.target, last.reason)
    if last.state in (State.ROLLED_BACK, State.ROLLING_BACK):
        if last.kind is Kind.ROLLBACK:
            return Outcome(Result.REVERTED, installed, last.target, last.reason)
        result = Result.ROLLED_BACK if last.blame else Result.NOTHING
        return Outcome(result, installed, last.target, last.reason)
    if last.state is State.FAILED:
        return Outcome(Result.FAILED, installed, last.target, last.reason)
    return Outcome(Result.NOTHING, installed, last.target, last.reason)
