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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from fleetup._atomic import storage_error
from fleetup._facts import ReleaseFacts
from fleetup._release_parts import release_parts, shared_targets, version_parts
from fleetup._versions import parse_version
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
    """What a push published. ``releases``: every release now installable from the
    store; ``pending``: release target paths the targets name whose files are not
    pushed yet (not offered); ``already``: the push changed nothing."""

    targets_version: int
    snapshot_version: int
    timestamp_version: int
    stored_files: list[str]
    releases: list[StoredRelease]
    pending: list[str] = field(default_factory=list)
    already: bool = False


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
                    uploads: Mapping[str, Path], now: datetime | None = None,
                    release: tuple[str, str] | None = None) -> PushOutcome:
        """Publish targets metadata signed by the publisher, with the files it needs.

        ``roots``: new root versions (in any order), each signed by the previous root.
        ``uploads``: target path → a local file holding the bytes pushed for it.
        ``release``: (app, version) this push is for. Then only that release's files
        (and the shared indexes) must be there; the other releases the metadata names
        stay *pending* (not offered) until pushed, and pushing the metadata the server
        already has (or an older one naming the same release) adds the files only — a
        push is idempotent. Without it, every referenced file must be there.

        Raises:
            TrustError: a root or the targets is not signed as the trusted root requires.
            RollbackAttackError: the targets (or a root) version does not grow, and the
                push is not a release already named by the server's targets.
            MetadataExpiredError: the pushed targets metadata has already expired.
            IntegrityError: a pushed file does not match its target's length or hash.
            RepositoryError: a needed file is neither stored nor pushed, the release is
                not in the targets, another targets metadata has the same version,
                delegations, or another push holds the store.
            SigningKeyError: a new root no longer trusts the server's online keys.
            StorageError: the disk refused; the store is as it was.
        """
        repo = self.open(now)
        with repo_lock(self.layout):
            root_before = repo.root().version
            root = self._accept_roots(repo, roots)
            md = _parse(targets_data, Targets.type)
            new = md.signed.version > repo.targets().version
            if new:
                self._verify_targets(repo, root, md)
                published: Targets = md.signed
            else:
                published = _already_published(repo.targets(), md.signed, release)
            stored = self._stage_files(repo, published, uploads, release)
            if new:
                repo.stage_signed(md)
                repo.do_snapshot()
                repo.do_timestamp(force=True)
            repo.commit()
            ready, pending = self._installable(published)
            return PushOutcome(published.version, repo.snapshot().version,
                               repo.timestamp().version, stored, ready, pending,
                               already=not (new or stored or root.version > root_before))

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
                     uploads: Mapping[str, Path], release: tuple[str, str] | None
                     ) -> list[str]:
        """Stage each pushed file a target lacks; check the push brings what it must."""
        stored: list[str] = []
        for path, target in targets.targets.items():
            source = uploads.get(path)
            if source is None or self._present(target):
                continue
            _check_file(source, target)
            repo.stage_target(source, target)
            stored.append(path)
        needed = list(targets.targets) if release is None else _needed(targets, release)
        for path in needed:
            if path not in stored and not self._present(targets.targets[path]):
                raise RepositoryError(f"{path} is referenced but was not pushed")
        return stored

    def _present(self, target: TargetFile) -> bool:
        return target_file_name(self.layout, target).exists()

    def _installable(self, targets: Targets) -> tuple[list[StoredRelease], list[str]]:
        """The releases whose every part is stored, and the target paths of the rest."""
        ready: list[StoredRelease] = []
        pending: list[str] = []
        parts = release_parts(_customs(targets))
        for path, (t, facts) in releases_of(targets).items():
            if all(self._present(targets.targets[p]) for p in parts[path]):
                ready.append(StoredRelease(facts, path, t.length, t.hashes["sha256"]))
            else:
                pending.append(path)
        return ready, pending

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
        """The current targets version and its releases whose files are all stored.

        Raises:
            RepositoryError: the metadata is missing or corrupt.
        """
        repo = FileRepository(self.layout, RepoConfig.load(self.layout.config))
        targets = repo.targets()
        return targets.version, self._installable(targets)[0]

    def expires(self) -> dict[str, datetime]:
        """When each role's current metadata expires (for status pages)."""
        repo = FileRepository(self.layout, RepoConfig.load(self.layout.config))
        return {role: repo.open(role).signed.expires.astimezone(UTC)
                for role in ("root", "targets", *ONLINE_ROLES)}


def _customs(targets: Targets) -> dict[str, dict[str, Any] | None]:
    return {path: target.custom for path, target in targets.targets.items()}


def _needed(targets: Targets, release: tuple[str, str]) -> list[str]:
    """What a push of one release must leave stored: its parts and the shared targets.

    Raises:
        RepositoryError: the targets name no such release.
    """
    app, version = release
    wanted = parse_version(version)
    customs = _customs(targets)
    parts = version_parts(customs, app, lambda v: parse_version(v) == wanted)
    if not parts:
        raise RepositoryError(f"targets version {targets.version} holds no release "
                              f"{app} {version}")
    return shared_targets(customs) + parts


def _already_published(current: Targets, pushed: Targets,
                       release: tuple[str, str] | None) -> Targets:
    """The server's targets, when a push that is not newer names nothing new.

    The same version must be the same metadata; an older one may still bring the files
    of a release the server's targets name exactly as it does (a CI job pushing from an
    older checkout). Signatures need no check: the server already trusts ``current``.

    Raises:
        RepositoryError: another targets metadata has the server's version.
        RollbackAttackError: older metadata, not for a release named the same way.
    """
    if pushed.version == current.version:
        if pushed.to_dict() != current.to_dict():
            raise RepositoryError(f"targets version {pushed.version} differs from the "
                                  "server's version of the same number: was it signed "
                                  "from another copy of the repository?")
        return current
    if release is not None:
        app, version = release
        wanted = parse_version(version)
        mine = version_parts(_customs(pushed), app, lambda v: parse_version(v) == wanted)
        if mine and all(current.targets.get(p) == pushed.targets[p] for p in mine):
            return current
    raise RollbackAttackError(f"targets version {pushed.version} is not newer than the "
                              f"server's {current.version}, and does not name this release "
                              "as the server's does: run `fleetup release add` first")


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
