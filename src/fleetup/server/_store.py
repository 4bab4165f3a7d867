"""The release store: the TUF repository the server serves under ``/repo/``.

It has the served part of a publisher's repository (``<data>/repo/metadata``, ``targets``),
but the server holds only the **snapshot and timestamp** keys (``<data>/keys/``). Root
and targets stay with the publisher: a push brings targets metadata the publisher
signed, the server checks it against the root it trusts, stores the artifact files it
references, and re-signs only snapshot and timestamp. Someone who steals the data
directory can re-sign old targets metadata with fresh dates, but cannot sign anything
new, so no device installs anything the publisher did not sign.

``init_store`` (``fleetup admin repo init``) seeds the store from a publisher's
repository; ``ReleaseStore.accept_push`` is ``fleetup release push``;
``ReleaseStore.resign_if_due`` is the background re-signing.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from fleetup._atomic import storage_error
from fleetup._facts import ReleaseFacts
from fleetup.errors import (
    IntegrityError,
    MetadataExpiredError,
    RepositoryError,
    RollbackAttackError,
    SigningKeyError,
    TrustError,
    UsageError,
)
from fleetup.repository import (
    FileRepository,
    RepoConfig,
    RepoLayout,
    key_path,
    load_signer,
    open_repository,
    releases_of,
    repo_lock,
    save_key,
    target_file_name,
)

__all__ = ["PushOutcome", "ReleaseStore", "StoredRelease", "init_store", "store_layout"]

ONLINE_ROLES = (Snapshot.type, Timestamp.type)


@dataclass(frozen=True, slots=True)
class StoredRelease:
    """A release target as the server's database records it."""

    facts: ReleaseFacts
    target_path: str
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class PushOutcome:
    targets_version: int
    snapshot_version: int
    timestamp_version: int
    stored_files: list[str]
    releases: list[StoredRelease]


def store_layout(data_dir: Path) -> RepoLayout:
    """The store's layout: ``<data>/repo/metadata`` and ``targets``, served as they are.

    Unlike a publisher's repository it needs no ``public/`` folder: its keys live in
    ``<data>/keys``, and the server serves only those two folders.
    """
    return RepoLayout(data_dir / "repo", served=data_dir / "repo")


def init_store(source: Path, data_dir: Path, passphrase: bytes | None = None) -> RepoLayout:
    """Seed ``<data_dir>/repo`` from the publisher repository ``source``.

    Copies every root version, the current targets, snapshot and timestamp metadata,
    the target files the targets reference, the repository settings, and only the
    snapshot and timestamp keys (decrypted: the server signs unattended).

    Raises:
        UsageError: the server already has a release store.
        RepositoryError: ``source`` is not a repository or is incomplete.
        SigningKeyError: the online keys are missing or cannot be decrypted.
        StorageError: the disk refused.
    """
    repo = open_repository(source, list(ONLINE_ROLES), passphrase)
    store = store_layout(data_dir)
    if store.exists():
        raise UsageError(f"{store.root} already holds a release store")
    src = repo.layout
    # Files first and timestamp.json last: until it is there the store does not exist,
    # so an interrupted copy is simply done again.
    try:
        store.metadata.mkdir(parents=True, exist_ok=True)
        keys = data_dir / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        for role in ONLINE_ROLES:
            save_key(key_path(keys, role), repo.signers[role][0], None)  # type: ignore[arg-type]
        for target in repo.targets().targets.values():
            dest = target_file_name(store, target)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(target_file_name(src, target), dest)
        shutil.copy2(src.config, store.config)
        names = [p.name for p in src.metadata.glob("*.root.json")] + [
            "root.json", f"{repo.snapshot().meta['targets.json'].version}.targets.json",
            f"{repo.timestamp().snapshot_meta.version}.snapshot.json", "timestamp.json"]
        for name in names:
            shutil.copy2(src.metadata / name, store.metadata / name)
    except OSError as e:
        raise storage_error(e, f"copy the repository into {store.root}") from e
    return store


def _parse(data: bytes, role: str) -> Metadata[Any]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as e:
        raise TrustError(f"the pushed {role} metadata is not valid TUF metadata") from e
    if md.signed.type != role:
        raise TrustError(f"expected {role} metadata, got {md.signed.type}")
    return md


class ReleaseStore:
    """The server's repository directory plus its two online keys."""

    def __init__(self, data_dir: Path) -> None:
        self.layout = store_layout(data_dir)
        self.keys_dir = data_dir / "keys"

    def exists(self) -> bool:
        return self.layout.exists()

    def open(self, now: datetime | None = None) -> FileRepository:
        """The repository with the snapshot and timestamp signers loaded.

        Raises:
            RepositoryError: no release store (run ``fleetup admin repo init``).
            SigningKeyError: an online key is missing or not the root's.
        """
        if not self.exists():
            raise RepositoryError("the server has no release store yet: run "
                                  "`fleetup admin repo init --from REPO`")
        repo = FileRepository(self.layout, RepoConfig.load(self.layout.config), now=now)
        self._load_signers(repo, repo.root())
        return repo

    def _load_signers(self, repo: FileRepository, root: Root) -> None:
        for role in ONLINE_ROLES:
            signer = load_signer(key_path(self.keys_dir, role), None,
                                 set(root.roles[role].keyids), role)
            repo.signers[role] = [signer]

    def accept_push(self, targets_data: bytes, roots: Sequence[bytes],
                    uploads: Mapping[str, Path], now: datetime | None = None) -> PushOutcome:
        """Publish targets metadata signed by the publisher, with the files it needs.

        ``roots``: new root versions (in any order), each signed by the previous root.
        ``uploads``: target path → a local file holding the bytes pushed for it.

        Raises:
            TrustError: a root or the targets is not signed as the trusted root requires.
            RollbackAttackError: the targets (or a root) version does not grow.
            MetadataExpiredError: the pushed targets metadata has already expired.
            IntegrityError: a pushed file does not match its target's length or hash.
            RepositoryError: a referenced file is neither stored nor pushed, delegations,
                or another push holds the store.
            SigningKeyError: a new root no longer trusts the server's online keys.
            StorageError: the disk refused; the store is as it was.
        """
        repo = self.open(now)
        with repo_lock(self.layout):
            root = self._accept_roots(repo, roots)
            md = _parse(targets_data, Targets.type)
            self._verify_targets(repo, root, md)
            stored = self._stage_files(repo, md.signed, uploads)
            repo.stage_signed(md)
            repo.do_snapshot()
            repo.do_timestamp(force=True)
            repo.commit()
            releases = [StoredRelease(facts, path, t.length, t.hashes["sha256"])
                        for path, (t, facts) in releases_of(md.signed).items()]
            return PushOutcome(md.signed.version, repo.snapshot().version,
                               repo.timestamp().version, stored, releases)

    def _accept_roots(self, repo: FileRepository, roots: Sequence[bytes]) -> Root:
        trusted: Root = repo.root()
        for md in sorted((_parse(r, Root.type) for r in roots),
                         key=lambda m: int(m.signed.version)):
            if md.signed.version <= trusted.version:
                continue  # already trusted
            if md.signed.version != trusted.version + 1:
                raise RollbackAttackError(f"root version {md.signed.version} does not follow "
                                          f"the trusted {trusted.version}")
            try:
                trusted.verify_delegate(Root.type, md.signed_bytes, md.signatures)
                md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
            except (UnsignedMetadataError, TufRepositoryError) as e:
                raise TrustError(f"root version {md.signed.version} is not signed by the "
                                 f"trusted root's keys and its own: {e}") from e
            repo.stage_signed(md)
            trusted = md.signed
        try:
            self._load_signers(repo, trusted)
        except SigningKeyError as e:
            raise SigningKeyError(f"the new root no longer trusts the server's online keys "
                                  f"(run `fleetup admin repo init` again): {e}") from e
        return trusted

    @staticmethod
    def _verify_targets(repo: FileRepository, root: Root, md: Metadata[Any]) -> None:
        try:
            root.verify_delegate(Targets.type, md.signed_bytes, md.signatures)
        except (UnsignedMetadataError, TufRepositoryError) as e:
            raise TrustError(f"the targets metadata is not signed by the publisher's "
                             f"targets key: {e}") from e
        current = repo.targets().version
        if md.signed.version <= current:
            raise RollbackAttackError(f"targets version {md.signed.version} is not newer than "
                                      f"the server's {current}: run `fleetup release add` "
                                      "first, or the release is already pushed")
        if md.signed.is_expired(repo.now):
            raise MetadataExpiredError("the pushed targets metadata has expired")
        if md.signed.delegations is not None:
            raise RepositoryError("delegated targets are not supported by the fleet server")

    def _stage_files(self, repo: FileRepository, targets: Targets,
                     uploads: Mapping[str, Path]) -> list[str]:
        stored: list[str] = []
        for path, target in targets.targets.items():
            if target_file_name(self.layout, target).exists():
                continue
            source = uploads.get(path)
            if source is None:
                raise RepositoryError(f"{path} is referenced but was not pushed")
            _check_file(source, target)
            repo.stage_target(source, target)
            stored.append(path)
        return stored

    def resign_if_due(self, remaining_share: float, now: datetime | None = None) -> list[str]:
        """Re-sign snapshot and/or timestamp when less than ``remaining_share`` of their
        lifetime is left. Returns the roles re-signed (none when nothing was due).

        Raises:
            RepositoryError: no store, or another push holds it (try again later).
            SigningKeyError: an online key is missing or wrong.
            StorageError: the disk refused.
        """
        repo = self.open(now)
        due = [role for role in ONLINE_ROLES
               if repo.open(role).signed.expires - repo.now
               < repo.config.expiry(role) * remaining_share]
        if not due:
            return []
        with repo_lock(self.layout):
            if Snapshot.type in due:
                repo.do_snapshot(force=True)
            repo.do_timestamp(force=True)
            repo.commit()
        return [Snapshot.type, Timestamp.type] if Snapshot.type in due else [Timestamp.type]

    def current_releases(self) -> tuple[int, list[StoredRelease]]:
        """The current targets version and its releases.

        Raises:
            RepositoryError: the metadata is missing or corrupt.
        """
        repo = FileRepository(self.layout, RepoConfig.load(self.layout.config))
        targets = repo.targets()
        return targets.version, [StoredRelease(facts, path, t.length, t.hashes["sha256"])
                                 for path, (t, facts) in releases_of(targets).items()]

    def expires(self) -> dict[str, datetime]:
        """When each role's current metadata expires (for status pages)."""
        repo = FileRepository(self.layout, RepoConfig.load(self.layout.config))
        return {role: repo.open(role).signed.expires.astimezone(UTC)
                for role in ("root", "targets", *ONLINE_ROLES)}


def _check_file(source: Path, target: TargetFile) -> None:
    try:
        with source.open("rb") as f:
            target.verify_length_and_hashes(f)
    except OSError as e:
        raise storage_error(e, f"read the pushed {target.path}") from e
    except Exception as e:
        if type(e).__module__.startswith("tuf"):
            raise IntegrityError(f"the pushed {target.path} does not match its signed "
                                 "length and hash") from e
        raise
