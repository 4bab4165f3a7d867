"""fleetup updates itself: the app ``fleetup-agent`` installed into ``[self_update] root``.

The agent's own releases go through the same state machine as the app's (a second
:class:`Agent` whose root is ``[self_update] root``), with one change: the switch is
preceded by **probation**. Who decides is never the new code alone:

1. The old agent (the running daemon) stages the new tree, then starts
   ``releases/<new>/bin/fleetup agent -c AGENT.toml run --probation MARKER`` as a child.
   The child must, within ``[self_update] timeout``, read the old agent's journal,
   history, failed set and trusted metadata, refresh the signed metadata (on a private
   copy; the old agent holds the lock) and — in fleet mode — check in, then write
   MARKER naming its version and pid, and exit 0.
2. The *old* agent reads the verdict. Proved: it swaps ``current`` of the agent root,
   commits, and execs ``current/bin/fleetup ... run`` (same pid: the supervised app stays
   its child and is adopted, not restarted). Not proved: it kills the child's process
   group, removes the tree, records the version as failed (not retried by itself) and
   carries on.
3. ``current`` moves only after the verdict, so a crash or reboot during probation
   starts the old agent again (the service manager runs ``current/bin/fleetup``). The
   old agent finds the journal in ``staged`` and ``.fleetup/probation.json`` naming the
   try: one interrupted probation is tried again, a second is a failure.

The app is not supervised by the probation child and never restarted by a handover:
the exec keeps the app process a child of the same pid, and the new daemon adopts it
from ``FLEETUP_ADOPT_APP`` instead of starting another.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import fleetup
from fleetup._agent_tree import AGENT_APP, finish_tree
from fleetup._atomic import atomic_write
from fleetup._facts import ReleaseFacts
from fleetup._manifest import scan_tree
from fleetup._versions import UpdateType
from fleetup.agent._agent import Agent, Result
from fleetup.agent._config import (
    AgentConfig,
    HealthConfig,
    ModulesConfig,
    ProcessConfig,
    PushConfig,
    SelfUpdateConfig,
    StatusApiConfig,
)
from fleetup.agent._director import AgentEvent
from fleetup.agent._install import discard_tree, remove_release
from fleetup.agent._lifecycle import Event, Journal
from fleetup.agent._store import DeviceStore
from fleetup.agent._supervisor import AppSupervisor
from fleetup.errors import FleetupError, StateError, UsageError

__all__ = ["ADOPT_ENV", "SelfUpdater", "adopt_app", "detach_app", "install_self", "prove",
           "self_config"]

log = logging.getLogger("fleetup.agent")

ADOPT_ENV = "FLEETUP_ADOPT_APP"
PROBATION_TRIES = 2      # an interrupted probation is tried once more, then it failed
MAX_PROOF = 4096         # bytes of the proof marker read back (the child is untrusted)


def self_config(config: AgentConfig) -> AgentConfig:
    """The config of the agent that installs fleetup itself: the app's trust and
    repository, the agent root, no process, modules, API or push of its own.

    Raises:
        UsageError: there is no ``[self_update]`` section.
    """
    su = _section(config)
    return replace(config, app=AGENT_APP, root=su.root, channel=su.channel or config.channel,
                   platform=su.platform, repo_url=config.release_url, server_url=None,
                   enrollment_token=None, process=ProcessConfig(),
                   health=HealthConfig(startup_grace=0.0), modules=ModulesConfig(enabled=False),
                   status_api=StatusApiConfig(), push=PushConfig(), self_update=None)


def _section(config: AgentConfig) -> SelfUpdateConfig:
    if config.self_update is None:
        raise UsageError("set [self_update] root in the agent's config to let fleetup "
                         "update itself")
    return config.self_update


class SelfUpdateAgent(Agent):
    """An :class:`Agent` of ``fleetup-agent`` whose switch waits for probation."""

    def __init__(self, config: AgentConfig, **kwargs: Any) -> None:
        super().__init__(self_config(config), **kwargs)
        self.app_config = config
        self.timeout = _section(config).timeout

    def _switch(self, j: Journal) -> Journal:
        version = j.target or ""
        reason = self._probation(version)
        if reason is None:
            return super()._switch(j)
        log.error("fleetup-agent %s failed its probation: %s", version, reason)
        self.store.mark_failed(version, reason)
        remove_release(self.store, version)
        self.sink.emit(AgentEvent("self-update-failed", version=version,
                                  from_version=j.installed, update_id=j.update_id,
                                  reason=reason))
        return self._advance(j, Event.SWITCH_FAILED, reason=reason)

    @property
    def _probation_file(self) -> Path:
        return self.store.layout.state / "probation.json"

    def _probation(self, version: str) -> str | None:
        """Run the new agent on probation; ``None`` if it proved itself, else why not."""
        tries = self._probation_tries(version)
        if tries >= PROBATION_TRIES:
            self._probation_file.unlink(missing_ok=True)
            return f"its probation was interrupted {tries} times (crash or reboot)"
        atomic_write(self._probation_file, json.dumps(
            {"format": 1, "version": version, "tries": tries + 1,
             "started_at": datetime.now(UTC).isoformat()}).encode(), mode=0o600)
        try:
            return run_probation(self.store.layout.release_dir(version), version,
                                 self.app_config, self.store.layout.logs, self.timeout)
        finally:
            self._probation_file.unlink(missing_ok=True)

    def _probation_tries(self, version: str) -> int:
        try:
            body = json.loads(self._probation_file.read_bytes())
        except (FileNotFoundError, ValueError):
            return 0
        if not isinstance(body, dict) or body.get("version") != version:
            return 0
        tries = body.get("tries", 0)
        return tries if isinstance(tries, int) else PROBATION_TRIES


def run_probation(tree: Path, version: str, config: AgentConfig, logs: Path,
                  timeout: float) -> str | None:
    """Start ``tree``'s fleetup on probation and wait for its proof; ``None`` if it
    proved itself, else the reason. The child's process group is killed at the timeout."""
    if config.source is None:
        return "the agent's config file is unknown"
    marker = logs / f"proved-{version}.json"
    marker.unlink(missing_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    output = logs / f"probation-{version}.log"
    argv = [str(tree / "bin" / "fleetup"), "agent", "-c", str(config.source.resolve()),
            "run", "--probation", str(marker)]
    with output.open("wb") as out:
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        except OSError as e:
            return f"cannot start: {e.strerror}"
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return f"did not prove itself within {timeout:g}s"
    if code != 0:
        return f"exited {code} on probation: {_tail(output)}"
    return _check_proof(marker, version, child.pid)


def _check_proof(marker: Path, version: str, pid: int) -> str | None:
    try:
        with marker.open("rb") as f:
            body = json.loads(f.read(MAX_PROOF))
    except (OSError, ValueError):
        return "exited without writing its proof"
    if not isinstance(body, dict) or body.get("version") != version or body.get("pid") != pid:
        return f"its proof is not of {version} (pid {pid}): {body!r:.200}"
    return None


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 2048))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


def prove(config: AgentConfig, marker: Path) -> None:
    """The probation child's work: read the old agent's state, refresh the signed
    metadata (and check in, in fleet mode), then write ``marker``.

    Raises:
        FleetupError: any of it failed (the child then exits non-zero, unproved).
    """
    from fleetup.agent import build_agent

    agent = build_agent(config)
    store = agent.store
    store.load_journal()
    store.history()
    store.failed()
    store.load_status()
    own = DeviceStore(_section(config).root)
    own.load_journal()
    own.failed()
    answer = agent.check()  # beside the locked daemon: a private metadata copy
    atomic_write(marker, json.dumps({"version": fleetup.__version__, "pid": os.getpid(),
                                     "installed": answer.installed}).encode(), mode=0o600)
    log.info("fleetup %s proved itself", fleetup.__version__)


class SelfUpdater:
    """What the daemon calls after each app cycle: update fleetup itself if a new
    release is there, and say which launcher to hand over to."""

    def __init__(self, config: AgentConfig, agent: Agent) -> None:
        self.config = config
        self.agent = SelfUpdateAgent(config, stop=agent.stop, sink=agent.sink)

    def cycle(self) -> list[str] | None:
        """The argv to exec after a new agent was committed, else ``None``."""
        try:
            outcome = self.agent.update()
        except FleetupError as e:
            log.error("self-update check failed: %s", e)
            return None
        if outcome.result is not Result.INSTALLED:
            return None
        log.info("fleetup-agent %s committed: handing over", outcome.version)
        return handover_argv(self.config)


def handover_argv(config: AgentConfig) -> list[str]:
    su = _section(config)
    assert config.source is not None
    return [str(su.root / "current" / "bin" / "fleetup"), "agent", "-c",
            str(config.source.resolve()), "run"]


def detach_app(supervisor: AppSupervisor | None) -> None:
    """Leave the app running across the exec: the supervisor forgets it, the new
    daemon adopts it (``FLEETUP_ADOPT_APP``)."""
    if supervisor is None:
        return
    with supervisor._lock:
        process, supervisor.process = supervisor.process, None
    if process is not None and process.poll() is None:
        os.environ[ADOPT_ENV] = str(process.pid)


def adopt_app(supervisor: AppSupervisor | None) -> None:
    """Adopt the app a previous daemon of this pid left running (see :func:`detach_app`)."""
    text = os.environ.pop(ADOPT_ENV, None)
    if supervisor is None or text is None or not text.isdigit():
        return
    adopted = _Adopted(int(text))
    if adopted.poll() is None:
        supervisor.process = cast("subprocess.Popen[bytes]", adopted)
        log.info("app (pid %d) adopted from the previous agent", adopted.pid)


class _Adopted:
    """The part of :class:`subprocess.Popen` the supervisor uses, for a child inherited
    across ``exec`` (still this process's child, so ``waitpid`` works)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.returncode = -1
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(0.05)
        return code


# -- install-self ------------------------------------------------------------------------


def install_self(config: AgentConfig) -> list[str]:
    """Make the running fleetup the first release under ``[self_update] root``; returns
    the argv a service manager runs.

    Raises:
        UsageError: no ``[self_update]`` section.
        StateError: a dependency of fleetup is not installed; the root is locked.
    """
    su = _section(config)
    store = DeviceStore(su.root)
    version = fleetup.__version__
    with store.lock():
        if version not in store.kept_versions():
            partial = store.layout.partial_dir(version)
            discard_tree(partial)
            copy_running_fleetup(partial / "lib")
            finish_tree(partial, su.platform)
            _commit_tree(store, partial, version, su.platform)
        store.point_current(version)
    return handover_argv(config)


def _commit_tree(store: DeviceStore, tree: Path, version: str, platform: str) -> None:
    manifest = scan_tree(tree)
    facts = ReleaseFacts(app=AGENT_APP, version=version, platform=platform, channels=(),
                         update_type=UpdateType.PATCH, tree_digest=manifest.digest(),
                         tree_size=sum(e.size for e in manifest.entries),
                         tree_entries=len(manifest.entries),
                         published=datetime.now(UTC).isoformat(timespec="seconds"),
                         notes="installed by agent install-self")
    store.save_manifest(version, manifest, facts)
    tree.rename(store.layout.release_dir(version))


def copy_running_fleetup(lib: Path) -> None:
    """Copy the fleetup package this process runs and every installed distribution it
    depends on (extras and markers evaluated) into ``lib``, as ``pip --target`` would."""
    lib.mkdir(parents=True, exist_ok=True)
    package = Path(fleetup.__file__).resolve().parent
    shutil.copytree(package, lib / "fleetup",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dist in _dependencies():
        _copy_distribution(dist, lib)


def _dependencies() -> list[metadata.Distribution]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("fleetup", frozenset())]
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise StateError(f"fleetup needs {name}, which is not installed here") from None
        if name != "fleetup":
            seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in (extras or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return list(seen.values())


def _copy_distribution(dist: metadata.Distribution, lib: Path) -> None:
    base = Path(str(dist.locate_file(""))).resolve()
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file))).resolve()
        if not source.is_relative_to(base) or "__pycache__" in file.parts:
            continue  # console scripts (../../bin) and byte code are not copied
        dest = lib / source.relative_to(base)
        if source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


def exec_handover(argv: list[str]) -> None:
    """Become the new agent (same pid: the app stays a child). Returns only if the exec
    failed; the service manager then starts ``current/bin/fleetup`` — the new one."""
    log.info("exec %s", " ".join(argv))
    logging.shutdown()
    try:
        os.execv(argv[0], argv)  # noqa: S606 - replacing this process is the point
    except OSError as e:
        log.error("cannot exec the new agent %s: %s", argv[0], e.strerror)
