"""Real devices for process-level tests: publish releases, write AGENT.toml, run
``fleetup agent`` as a subprocess, and inspect what is installed."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetup._facts import HealthSpec
from fleetup._manifest import scan_tree
from fleetup.repository import ReleaseRequest, add_release, init_repo

FLEETUP = [sys.executable, "-m", "fleetup"]
PLATFORM = "linux-x86_64"


def make_tree(dest: Path, version: str, *, files: int = 20, file_size: int = 4096,
              health_exit: int = 0, health_sleep: float = 0.0, seed: int = 0,
              extra: Mapping[str, bytes] | None = None) -> Path:
    """A release tree: an executable, a health check, text and binary files, a symlink.

    Files are derived from ``seed`` (not the version) so consecutive versions share
    most content, as real releases do; each version changes a few files.
    """
    rng = random.Random(seed)
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir()
    app = dest / "bin" / "app"
    app.write_text(f"#!/bin/sh\necho 'app {version}'\nexec sleep 3600\n")
    app.chmod(0o755)
    health = dest / "health.sh"
    sleep = f"sleep {health_sleep}\n" if health_sleep else ""
    health.write_text(f"#!/bin/sh\n{sleep}exit {health_exit}\n")
    health.chmod(0o755)
    (dest / "VERSION").write_text(version + "\n")
    for i in range(files):
        body = rng.randbytes(file_size) if i % 2 else (
            f"line {i} of a text file\n" * (file_size // 24)).encode()
        if i % 7 == 0:
            body += version.encode()  # a few files change between versions
        (dest / "lib" / f"part{i:03d}.{'bin' if i % 2 else 'txt'}").write_bytes(body)
    os.symlink("bin/app", dest / "run")
    for name, data in (extra or {}).items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


@dataclass
class Published:
    version: str
    digest: str
    src: Path


def publish(repo: Path, work: Path, version: str, *, app: str = "hello",
            channels: Sequence[str] = ("stable",), health_timeout: float = 30.0,
            **tree: object) -> Published:
    src = make_tree(work / f"src-{version}-{'-'.join(channels)}", version, **tree)  # type: ignore[arg-type]
    added = add_release(repo, ReleaseRequest(
        src=src, app=app, version=version, platform=PLATFORM, channels=tuple(channels),
        health=HealthSpec(("./health.sh",), None, health_timeout)))
    return Published(version, added.facts.tree_digest, src)


def new_repo(path: Path) -> Path:
    init_repo(path)
    return path


def write_config(path: Path, root: Path, repo_url: str, trusted_root: Path, *,
                 channel: str = "stable", extra: str = "") -> Path:
    path.write_text(f"""app = "hello"
root = "{root}"
repo_url = "{repo_url}"
trusted_root = "{trusted_root}"
channel = "{channel}"
platform = "{PLATFORM}"

[health]
startup_grace = 0.0

[download]
retries = 2
backoff = 0.05
max_backoff = 0.2
{extra}
""")
    return path


def run_agent(config: Path, *args: str, env: Mapping[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*FLEETUP, "agent", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)


def current_digest(root: Path) -> str | None:
    """The manifest digest of the tree ``current`` points to (None if there is none)."""
    current = root / "current"
    if not current.is_symlink():
        return None
    return scan_tree(current.resolve()).digest()


def dir_fingerprint(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its SHA-256 (to prove data/ untouched)."""
    result = {}
    for file in sorted(path.rglob("*")):
        if file.is_file():
            result[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return result


def clone_device(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def publish_raw_archive(repo: Path, work: Path, version: str, archive: bytes, *,
                        tree_size: int, tree_entries: int, app: str = "hello",
                        channels: Sequence[str] = ("stable",)) -> None:
    """Publish arbitrary archive bytes as a release, signed with the repository's real
    keys — what a compromised build pipeline could sign. The tree digest is a dummy:
    a device must refuse the archive before it ever gets to compare digests."""
    from datetime import UTC, datetime

    from tuf.api.metadata import TargetFile

    from fleetup._facts import ReleaseFacts, index_target_path, render_index
    from fleetup._versions import UpdateType
    from fleetup.repository import open_repository, releases_of

    repository = open_repository(repo, ["targets", "snapshot", "timestamp"], None)
    path = work / f"raw-{version}.tar.zst"
    path.write_bytes(archive)
    facts = ReleaseFacts(app=app, version=version, platform=PLATFORM, channels=tuple(channels),
                         update_type=UpdateType.PATCH, tree_digest="sha256:" + "0" * 64,
                         tree_size=tree_size, tree_entries=tree_entries,
                         published=datetime.now(UTC).isoformat())
    target = TargetFile.from_file(facts.target_path, str(path), ["sha256"])
    target.unrecognized_fields["custom"] = facts.to_custom()
    existing = [f.target_path for _, f in releases_of(repository.targets()).values()
                if f.app == app and f.platform == PLATFORM]
    index = work / f"index-{version}.json"
    index.write_bytes(render_index(app, PLATFORM, [*existing, facts.target_path]))
    index_target = TargetFile.from_file(index_target_path(app, PLATFORM), str(index), ["sha256"])
    with repository.edit_targets() as targets:
        targets.targets[target.path] = target
        targets.targets[index_target.path] = index_target
    repository.stage_target(path, target)
    repository.stage_target(index, index_target)
    repository.do_snapshot()
    repository.do_timestamp()
    repository.commit()
