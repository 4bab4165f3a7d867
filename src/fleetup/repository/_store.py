"""A TUF repository in a directory, changed only in whole transactions.

Layout (consistent snapshots, so a CDN may cache every file forever)::

    REPO/public/metadata/N.root.json, root.json   every root version, and the newest
    REPO/public/metadata/N.targets.json           versioned targets
    REPO/public/metadata/N.snapshot.json          versioned snapshot
    REPO/public/metadata/timestamp.json           the one unversioned file
    REPO/public/targets/<dir>/<sha256>.<name>     artifacts, named by content
    REPO/keys/<role>.key                          private keys (0600)
    REPO/fleetup-repo.json                        expiries and publishing settings

``REPO/public`` is what devices read and the only folder anyone serves; nothing private
is ever written under it. (The first layout had ``metadata/`` and ``targets/`` beside
``keys/``, so serving REPO served the keys: ``_migrate.check_layout`` refuses it and
``_migrate.migrate_layout`` converts it.)

The current state is read from ``timestamp.json`` down (timestamp → snapshot version →
targets version), so files written ahead of a commit are invisible until the timestamp
is replaced — the one atomic step that publishes. A failed transaction removes what it
added, leaving the directory exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from fleetup._atomic import atomic_write, fsync_dir, storage_error
from fleetup._treewriter import remove_tree
from fleetup.errors import MetadataExpiredError, RepositoryError, StorageError, UsageError

__all__ = ["FileRepository", "RepoConfig", "RepoLayout", "target_file_name"]

_SERIALIZER = JSONSerializer(compact=False)
_ROOT_FILE = re.compile(r"^(\d+)\.root\.json$")
_OLD_SERVED = ("metadata", "targets")  # what the first layout kept at REPO/, beside keys/


@dataclass(frozen=True, slots=True)
class RepoLayout:
    """Where each part of a repository lives.

    ``served`` is the folder devices read (``metadata/``, ``targets/``): ``REPO/public``
    for a publisher. The fleet server's store passes its own root, which holds no keys
    and of which it serves only ``metadata/`` and ``targets/``.
    """

    root: Path
    served: Path | None = None

    @property
    def public(self) -> Path:
        return self.served if self.served is not None else self.root / "public"

    @property
    def metadata(self) -> Path:
        return self.public / "metadata"

    @property
    def targets(self) -> Path:
        return self.public / "targets"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def config(self) -> Path:
        return self.root / "fleetup-repo.json"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    def exists(self) -> bool:
        return self.config.is_file() and (self.metadata / "timestamp.json").is_file()

    def is_old_layout(self) -> bool:
        """True for the first layout: ``metadata/`` (or ``targets/``) beside ``keys/``."""
        if self.served is not None:
            return False
        return any((self.root / name).exists() for name in _OLD_SERVED)


# What a new repository's deltas may use: every method (see RepoConfig.delta_methods).
DEFAULT_DELTA_METHODS = ("lit", "zdict", "bsdiff", "hdiff")


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """Per-repository settings, stored in ``fleetup-repo.json``."""

    expiry_days: Mapping[str, float] = field(default_factory=lambda: {
        "root": 365.0, "targets": 90.0, "snapshot": 7.0, "timestamp": 1.0})
    delta_count: int = 3
    compression_level: int = 10
    # Patch methods deltas may use. HDiffPatch is a dependency of fleetup, so every agent
    # of this version applies all four; a delta using hdiff still says so in its facts,
    # and an agent where hdiffpatch could not be installed takes the full archive.
    delta_methods: tuple[str, ...] = DEFAULT_DELTA_METHODS

    def expiry(self, role: str) -> timedelta:
        return timedelta(days=self.expiry_days[role])

    def to_json(self) -> bytes:
        return json.dumps({"format": 1, "expiry_days": dict(self.expiry_days),
                           "delta_count": self.delta_count,
                           "compression_level": self.compression_level,
                           "delta_methods": list(self.delta_methods)},
                          indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def load(cls, path: Path) -> RepoConfig:
        """Raises RepositoryError if the file is missing or malformed."""
        try:
            raw = json.loads(path.read_bytes())
            expiry_days = {k: float(v) for k, v in raw["expiry_days"].items()}
            missing = sorted({"root", "targets", "snapshot", "timestamp"} - expiry_days.keys())
            if missing:
                raise ValueError(f"no expiry for {', '.join(missing)}")
            return cls(expiry_days=expiry_days,
                       delta_count=int(raw.get("delta_count", 3)),
                       compression_level=int(raw.get("compression_level", 10)),
                       delta_methods=tuple(str(m) for m in raw.get(
                           "delta_methods", DEFAULT_DELTA_METHODS)))
        except FileNotFoundError:
            raise RepositoryError(f"not a fleetup repository (no {path.name}): "
                                  f"{path.parent}") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RepositoryError(f"unreadable repository settings {path}: {e}") from e


def target_file_name(layout: RepoLayout, target: TargetFile) -> Path:
    """Where a target's bytes live: its hash prefixed to its base name."""
    dirname, _, basename = target.path.rpartition("/")
    digest = target.hashes["sha256"]
    return layout.targets / dirname / f"{digest}.{basename}"


@contextlib.contextmanager
def repo_lock(layout: RepoLayout) -> Iterator[None]:
    """Hold the repository's lock: one publisher at a time.

    Whatever is in the staging directory once the lock is held was left by a publisher
    that was killed; it is removed.

    Raises:
        RepositoryError: another process holds it.
    """
    # The lock is taken on the directory itself: a lock file would be a change to the
    # repository even when the operation holding it fails.
    try:
        fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise storage_error(e, f"lock {layout.root}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryError(f"another publisher is changing {layout.root}") from None
        with contextlib.suppress(OSError):
            remove_tree(layout.staging)
        yield
    finally:
        os.close(fd)


class FileRepository(Repository):
    """python-tuf's ``Repository`` over a :class:`RepoLayout`, with staged writes.

    ``open`` reads the committed (or already staged) metadata; ``close`` bumps version
    and expiry, signs with every signer given for the role, and stages the bytes.
    Nothing is visible to clients until :meth:`commit`.
    """

    def __init__(self, layout: RepoLayout, config: RepoConfig,
                 signers: Mapping[str, list[Signer]] | None = None,
                 now: datetime | None = None) -> None:
        self.layout = layout
        self.config = config
        self.signers: dict[str, list[Signer]] = {k: list(v) for k, v in (signers or {}).items()}
        self.now = now or datetime.now(UTC).replace(microsecond=0)
        self._metadata: dict[str, Metadata[Any]] = {}
        self._staged_meta: dict[str, bytes] = {}
        self._staged_targets: list[tuple[Path, Path]] = []

    # -- reading ---------------------------------------------------------------------

    def open(self, role: str) -> Metadata[Any]:
        if role not in self._metadata:
            self._metadata[role] = self._load(role)
        return copy.deepcopy(self._metadata[role])

    def _load(self, role: str) -> Metadata[Any]:
        if role == Root.type:
            return self._read(f"{self.latest_root_version()}.root.json")
        if role == Timestamp.type:
            return self._read("timestamp.json")
        if role == Snapshot.type:
            return self._read(f"{self.timestamp().snapshot_meta.version}.snapshot.json")
        meta = self.snapshot().meta.get(f"{role}.json")
        if meta is None:
            raise RepositoryError(f"role {role} is not in the snapshot")
        return self._read(f"{meta.version}.{role}.json")

    def _read(self, name: str) -> Metadata[Any]:
        path = self.layout.metadata / name
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise RepositoryError(f"repository metadata is missing: {path}") from None
        except OSError as e:
            raise storage_error(e, f"read {path}") from e
        except DeserializationError as e:
            raise RepositoryError(f"repository metadata is corrupt: {path}") from e

    def latest_root_version(self) -> int:
        versions = [int(m.group(1)) for p in self.layout.metadata.glob("*.root.json")
                    if (m := _ROOT_FILE.match(p.name))]
        if not versions:
            raise RepositoryError(f"no root metadata in {self.layout.metadata}")
        return max(versions)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": MetaFile(version=self.targets().version)}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(version=self.snapshot().version)

    # -- writing ---------------------------------------------------------------------

    def create(self, role: str, signed: Signed) -> None:
        """Start a role that has no metadata yet (``repo init``); version 0 + close → 1."""
        signed.version = 0
        self._metadata[role] = Metadata(signed)
        self.close(role, Metadata(signed))

    def close(self, role: str, md: Metadata[Any]) -> None:
        signers = self.signers.get(role)
        if not signers:
            raise RepositoryError(f"no {role} key loaded to sign {role} metadata")
        md.signed.version += 1
        md.signed.expires = self.now + self.config.expiry(role)
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        self._metadata[role] = md
        name = "timestamp.json" if role == Timestamp.type else f"{md.signed.version}.{role}.json"
        self._staged_meta[name] = md.to_bytes(_SERIALIZER)

    def stage_signed(self, md: Metadata[Any]) -> None:
        """Stage metadata signed elsewhere (a publisher's targets, a new root) unchanged.

        A fleet server publishes the publisher's targets this way: it holds no targets
        key, so it must not (and cannot) re-sign them.
        """
        role = md.signed.type
        self._metadata[role] = md
        name = "timestamp.json" if role == Timestamp.type else f"{md.signed.version}.{role}.json"
        self._staged_meta[name] = md.to_bytes(_SERIALIZER)

    def stage_target(self, source: Path, target: TargetFile) -> None:
        """Schedule ``source`` to become the bytes of ``target`` at commit."""
        self._staged_targets.append((source, target_file_name(self.layout, target)))

    def commit(self, root_last: bool = False) -> None:
        """Publish everything staged: artifacts, versioned metadata, root, then timestamp
        (with ``root_last``, as key rotations do: timestamp, then the new root).

        Raises:
            StorageError: the disk refused; everything this commit added is removed,
                everything it replaced is restored, and the repository is as it was.
        """
        added: list[Path] = []  # files and directories, in the order they were created
        replaced: dict[Path, bytes] = {}
        try:
            for source, dest in self._staged_targets:
                self._place_target(source, dest, added)
            ordered = sorted(self._staged_meta.items(),
                             key=lambda kv: _commit_order(kv[0], root_last))
            for name, data in ordered:
                self._write_meta(self.layout.metadata / name, data, added, replaced)
                if name.endswith(".root.json"):
                    self._write_meta(self.layout.metadata / "root.json", data, added, replaced)
        except (StorageError, OSError) as e:
            _undo(added, replaced)
            if isinstance(e, StorageError):
                raise
            raise storage_error(e, "publish") from e
        finally:
            self._staged_meta.clear()
            self._staged_targets.clear()

    @staticmethod
    def _write_meta(path: Path, data: bytes, added: list[Path],
                    replaced: dict[Path, bytes]) -> None:
        if path.exists():
            replaced.setdefault(path, path.read_bytes())
        else:
            added.append(path)
        atomic_write(path, data)

    def _place_target(self, source: Path, dest: Path, added: list[Path]) -> None:
        if dest.exists():
            return  # content-addressed: same name, same bytes
        missing = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
        added.extend(reversed(missing))  # parents first, so they are undone deepest first
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A fixed temp name, removed first: a publisher killed here left it behind, and
        # the repository lock says no other publisher is using it now.
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(source, tmp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        added.append(dest)
        fsync_dir(dest.parent)

    # -- checks ----------------------------------------------------------------------

    def check_not_expired(self, role: str, hint: str) -> None:
        """Raises MetadataExpiredError if ``role`` is expired at ``now``."""
        signed = self.open(role).signed
        if signed.is_expired(self.now):
            raise MetadataExpiredError(
                f"{role} metadata expired at {signed.expires.isoformat()}: {hint}")

    def verify_role(self, role: str) -> None:
        """Check that the committed ``role`` metadata is signed as the root requires.

        Raises:
            RepositoryError: signatures below threshold (wrong or foreign keys).
        """
        md = self.open(role)
        try:
            self.root().verify_delegate(role, md.signed_bytes, md.signatures)
        except TufRepositoryError as e:
            raise RepositoryError(f"{role} metadata is not validly signed: {e}") from e


def _undo(added: list[Path], replaced: Mapping[Path, bytes]) -> None:
    """Best effort: remove what a failed commit added (which frees space on a full
    disk), then put back what it replaced."""
    for path in reversed(added):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    for path, data in replaced.items():
        with contextlib.suppress(StorageError):
            atomic_write(path, data)


def _commit_order(name: str, root_last: bool = False) -> tuple[int, str]:
    if name == "timestamp.json":
        return (3, name)
    if name.endswith(".root.json"):
        return (4 if root_last else 2, name)
    if name.endswith(".snapshot.json"):
        return (1, name)
    return (0, name)


def new_root(keys: Mapping[str, Signer], consistent_snapshot: bool = True) -> Root:
    """A root delegating each top-level role to one key, threshold 1."""
    root = Root(consistent_snapshot=consistent_snapshot)
    for role, signer in keys.items():
        root.add_key(signer.public_key, role)
    return root


def new_targets() -> Targets:
    return Targets()


def new_snapshot() -> Snapshot:
    return Snapshot()


def new_timestamp() -> Timestamp:
    return Timestamp()


def check_writable(path: Path) -> None:
    """Raises UsageError when ``path`` exists and is not an empty directory."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path} exists and is not an empty directory")
