"""Publishing sample releases of a small app into a real, temporary fleetup repository.

The whole API::

    repo = SampleRepo.create(tmp_path)          # init_repo at tmp_path/"repo"
    repo.publish("1.0")                         # healthy release, channel stable
    repo.publish("1.1", health_exit=3)          # its health.sh exits 3
    repo.publish("2.0", update_type=UpdateType.MAJOR, channels=("beta",),
                 modules={"counter": "def tick(): ..."}, rollout="10,100@1h")
    repo.yank("1.1", "broken")
    repo.source("1.0")                          # the tree that was published as 1.0
    FakeSource(repo.path)                       # what an agent reads (tests.support.fake_source)

Every release tree (:func:`release_tree`) holds a binary ``bin/app`` (0755) of
``payload_size`` incompressible bytes in which only 64 depend on the version — so the
delta between two releases is tiny next to either archive — text files (``VERSION``,
``share/README.txt``), symlinks (``bin/run -> app``, ``docs -> share``), an empty
directory, a ``health.sh`` (0755) that writes a line to stderr and exits
``health_exit``, and optionally ``modules/<name>.py``. The release's signed health
check is ``["./health.sh"]`` (run in ``current/``). Trees are deterministic: the same
arguments give byte-identical trees.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fleetup._facts import HealthSpec, ReleaseFacts
from fleetup._versions import UpdateType
from fleetup.repository import AddedRelease, ReleaseRequest, add_release, init_repo, yank_release
from tests.support.trees import Dir, File, Link, TreeSpec, make_tree

__all__ = ["APP", "PLATFORM", "SampleRepo", "release_tree"]

APP = "hello"
PLATFORM = "linux-x86_64"


def release_tree(dest: Path, version: str, *, health_exit: int = 0,
                 modules: Mapping[str, str] | None = None, payload_size: int = 32 << 10,
                 extra: TreeSpec | None = None) -> Path:
    """Create the source tree of release ``version`` at ``dest``; returns ``dest``."""
    payload = bytearray(random.Random(7).randbytes(payload_size))
    mark = hashlib.sha256(version.encode()).digest() * 2
    offset = int.from_bytes(mark[:4], "big") % max(1, payload_size - 63)
    payload[offset:offset + 64] = mark
    spec: dict[str, File | Dir | Link | bytes | str] = {
        "VERSION": f"{version}\n",
        "bin/app": File(bytes(payload), 0o755),
        "bin/run": Link("app"),
        "docs": Link("share"),
        "share/README.txt": f"hello {version}: a sample app for fleetup's agent tests.\n",
        "var/empty": Dir(),
        "health.sh": File(f"#!/bin/sh\necho 'health of {version}: exit {health_exit}' >&2\n"
                          f"exit {health_exit}\n", 0o755),
    }
    for name, source in (modules or {}).items():
        spec[f"modules/{name}.py"] = source
    spec.update(extra or {})
    return make_tree(dest, spec)


@dataclass
class SampleRepo:
    """A repository at ``path``; release source trees are kept under ``work``."""

    path: Path
    work: Path

    @classmethod
    def create(cls, base: Path) -> SampleRepo:
        init_repo(base / "repo")
        return cls(base / "repo", base / "sources")

    def source(self, version: str, app: str = APP) -> Path:
        return self.work / f"{app}-{version}"

    def publish(self, version: str, *, health_exit: int = 0,
                modules: Mapping[str, str] | None = None,
                channels: Sequence[str] = ("stable",), update_type: UpdateType | None = None,
                min_from: str | None = None, rollout: str | None = None,
                health_timeout: float = 30.0, health: bool = True,
                payload_size: int = 32 << 10, extra: TreeSpec | None = None,
                app: str = APP, platform: str = PLATFORM, notes: str = "",
                now: datetime | None = None) -> AddedRelease:
        """Build the release tree and publish it (with deltas from recent releases)."""
        src = release_tree(self.source(version, app), version, health_exit=health_exit,
                           modules=modules, payload_size=payload_size, extra=extra)
        spec = HealthSpec(("./health.sh",), None, health_timeout) if health else None
        request = ReleaseRequest(src=src, app=app, version=version, platform=platform,
                                 channels=tuple(channels), update_type=update_type,
                                 notes=notes or f"release {version}", health=spec,
                                 min_from=min_from, rollout=rollout)
        return add_release(self.path, request, now=now)

    def yank(self, version: str, reason: str = "broken", app: str = APP) -> list[ReleaseFacts]:
        return yank_release(self.path, app=app, version=version, reason=reason)
