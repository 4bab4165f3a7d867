"""A ``ReleaseSource`` for agent tests: a real fleetup repository, read straight from disk.

The agent's release seam (``fleetup.agent._director.ReleaseSource``) without python-tuf's
client or HTTP: metadata comes from ``FileRepository(...).targets()`` (what the publisher
last committed), artifacts from the content-addressed files under ``REPO/targets/``.
Whatever :meth:`FakeSource.download` hands back was checked against its signed length
and sha256 with python-tuf's ``TargetFile.verify_length_and_hashes`` — the same promise
the real source keeps — so a test that damages bytes gets an ``IntegrityError``, not a
silently broken install. The whole API::

    source = FakeSource(repo_path)
    agent = Agent(config, source_factory=lambda: source)

    source.offline = True               # refresh() raises NetworkError (a failed check)
    source.fail_downloads.add(".tar.zst")  # downloads of matching targets raise NetworkError
    source.hide_deltas = True           # delta() finds none
    source.corrupt_deltas = True        # delta bytes are damaged in transit (IntegrityError)
    source.downloads["hello/.../hello-1.1.tar.zst"]   # download attempts per target path
    source.refreshes                    # refresh() calls

    config = agent_config(device_root, keep=2)                   # AgentConfig for tests
    agent, source = agent_over(repo_path, device_root, keep=2)   # both at once

:func:`agent_config` is an ``AgentConfig`` for tests (the app and platform of
``tests.support.releases``, a fixed device id, no start-up grace in the health check,
an unused repo URL and root of trust) with any field overridden; :func:`agent_over`
adds an :class:`~fleetup.agent.Agent` reading a FakeSource.

Each ``refresh()`` re-reads the repository, so a release published or yanked after the
agent was built is seen by its next cycle, as with a real repository.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile, Targets

from fleetup._facts import DeltaFacts, ReleaseFacts, delta_target_path
from fleetup.agent import Agent, AgentConfig
from fleetup.agent._config import HealthConfig
from fleetup.errors import IntegrityError, NetworkError, ReleaseNotFoundError
from fleetup.repository import (
    FileRepository,
    RepoConfig,
    RepoLayout,
    releases_of,
    target_file_name,
)
from tests.support.releases import APP, PLATFORM

__all__ = ["FakeSource", "agent_config", "agent_over"]

Progress = Callable[[int, int], None]


class FakeSource:
    """Reads the repository at ``repo``; see the module docstring for the switches."""

    def __init__(self, repo: Path) -> None:
        self.layout = RepoLayout(repo)
        self.offline = False
        self.fail_downloads: set[str] = set()
        self.hide_deltas = False
        self.corrupt_deltas = False
        self.downloads: Counter[str] = Counter()
        self.refreshes = 0
        self._signed: Targets | None = None

    # -- ReleaseSource ------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the committed targets metadata. Raises NetworkError when ``offline``."""
        self.refreshes += 1
        if self.offline:
            raise NetworkError("fake source: the repository cannot be reached")
        repo = FileRepository(self.layout, RepoConfig.load(self.layout.config))
        self._signed = repo.targets()

    def releases(self, app: str, platform: str) -> list[ReleaseFacts]:
        """Every release of ``app`` on ``platform``, yanked ones included, oldest first."""
        found = [facts for _, facts in releases_of(self._metadata()).values()
                 if facts.app == app and facts.platform == platform]
        return sorted(found, key=lambda f: f.parsed_version)

    def delta(self, app: str, platform: str, from_version: str, to_version: str
              ) -> tuple[DeltaFacts, int] | None:
        if self.hide_deltas:
            return None
        path = delta_target_path(app, platform, from_version, to_version)
        target = self._metadata().targets.get(path)
        if target is None:
            return None
        return DeltaFacts.from_custom(target.custom, path), target.length

    def release_length(self, facts: ReleaseFacts) -> int:
        return self._target(facts.target_path).length

    def download(self, target_path: str, dest: Path, progress: Progress | None = None,
                 tee: Callable[[int, bytes], None] | None = None) -> Path:
        """Copy the verified bytes of ``target_path`` to ``dest`` (atomically); ``dest``.

        Raises:
            NetworkError: the path matches ``fail_downloads`` (nothing is written).
            IntegrityError: the bytes do not match the signed length and sha256.
            ReleaseNotFoundError: no such signed target.
        """
        self.downloads[target_path] += 1
        if any(part in target_path for part in self.fail_downloads):
            raise NetworkError(f"fake source: connection reset while downloading {target_path}")
        target = self._target(target_path)
        data = target_file_name(self.layout, target).read_bytes()
        if self.corrupt_deltas and target_path.endswith(".fdelta"):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        try:
            target.verify_length_and_hashes(data)
        except tuf_errors.LengthOrHashMismatchError as e:
            raise IntegrityError(f"{target_path} does not match its signed hashes: {e}") from e
        if tee is not None:  # as a real fetcher does: the bytes as they "arrive"
            for offset in range(0, len(data), 64 << 10):
                tee(offset, data[offset:offset + (64 << 10)])
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = dest.with_name(f".{dest.name}.fake-tmp")
        temp.write_bytes(data)
        os.replace(temp, dest)
        if progress is not None:
            progress(len(data), len(data))
        return dest

    # -- helpers ------------------------------------------------------------------------

    def _metadata(self) -> Targets:
        if self._signed is None:  # used before a refresh: refresh once, as TUF does
            self.refresh()
        assert self._signed is not None
        return self._signed

    def _target(self, path: str) -> TargetFile:
        try:
            return self._metadata().targets[path]
        except KeyError:
            raise ReleaseNotFoundError(f"fake source: no signed target {path}") from None


def agent_config(root: Path, **fields: Any) -> AgentConfig:
    """An agent config for ``root`` as the tests use it; ``fields`` override any field."""
    values: dict[str, Any] = {
        "app": APP, "root": root, "trusted_root": root.parent / "unused-root.json",
        "repo_url": "http://127.0.0.1:9/unused/", "platform": PLATFORM,
        "device_id": "device-0001", "health": HealthConfig(startup_grace=0.0)}
    values.update(fields)
    return AgentConfig(**values)


def agent_over(repo: Path, root: Path, *, source: FakeSource | None = None,
               **fields: Any) -> tuple[Agent, FakeSource]:
    """An agent for the device ``root`` reading ``repo`` through one FakeSource."""
    source = source or FakeSource(repo)
    return Agent(agent_config(root, **fields), source_factory=lambda: source), source
