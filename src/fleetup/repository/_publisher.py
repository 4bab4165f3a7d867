"""What a publisher does to a release repository: init, add, yank, list, refresh, rotate.

Each operation validates everything it can before it writes anything, stages its
files, and publishes in one :meth:`FileRepository.commit`. On any error the repository
is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from packaging.version import Version
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Root, Snapshot, TargetFile, Targets, Timestamp

from fleetup._archive import build_archive, extract_archive
from fleetup._atomic import atomic_write, fsync_dir, storage_error
from fleetup._delta import (
    BASE_METHODS,
    DELTA_FORMAT,
    DeltaNotWorthItError,
    Method,
    make_delta,
)
from fleetup._facts import (
    DeltaFacts,
    HealthSpec,
    PhasedRollout,
    ReleaseFacts,
    check_name,
    index_target_path,
    render_index,
)
from fleetup._manifest import TreeManifest, scan_tree
from fleetup._treewriter import remove_tree
from fleetup._versions import UpdateType, derive_update_type, parse_version
from fleetup.errors import (
    DuplicateReleaseError,
    IntegrityError,
    ReleaseNotFoundError,
    RepositoryError,
    SigningKeyError,
    StorageError,
    UsageError,
)
from fleetup.repository._keys import ROLES, generate_key, key_path, load_signer, save_key
from fleetup.repository._migrate import check_layout
from fleetup.repository._store import (
    FileRepository,
    RepoConfig,
    RepoLayout,
    check_writable,
    new_root,
    repo_lock,
    target_file_name,
)

__all__ = [
    "AddedRelease",
    "ReleaseRequest",
    "add_release",
    "init_repo",
    "list_releases",
    "open_repository",
    "refresh_repo",
    "rotate_key",
    "rotate_keys",
    "yank_release",
]

Progress = Callable[[str], None]


def init_repo(path: Path, *, expiry_days: Mapping[str, float] | None = None,
              delta_methods: Sequence[str] | None = None,
              passphrase: bytes | None = None, now: datetime | None = None) -> RepoLayout:
    """Create a repository at ``path``: four ed25519 keys and version-1 metadata.

    Raises:
        UsageError: ``path`` exists and is not an empty directory, or a bad expiry.
        StorageError: the disk refused; nothing is left behind.
    """
    check_writable(path)
    config = RepoConfig()
    if expiry_days:
        merged = {**config.expiry_days, **expiry_days}
        if any(v <= 0 for v in merged.values()):
            raise UsageError("expiry days must be positive")
        config = RepoConfig(expiry_days=merged)
    if delta_methods is not None:
        config = dataclasses.replace(config, delta_methods=tuple(delta_methods))
    layout = RepoLayout(path)
    created = not path.exists()
    try:
        for directory in (layout.public, layout.metadata, layout.targets, layout.keys):
            directory.mkdir(parents=True, exist_ok=True)
        layout.keys.chmod(0o700)
        signers = {role: generate_key() for role in ROLES}
        for role, signer in signers.items():
            save_key(key_path(layout.keys, role), signer, passphrase)
        repo = FileRepository(layout, config, {r: [s] for r, s in signers.items()}, now)
        repo.create(Root.type, new_root(signers))
        repo.create(Targets.type, Targets())
        repo.create(Snapshot.type, Snapshot())
        repo.create(Timestamp.type, Timestamp())
        repo.commit()
        atomic_write(layout.config, config.to_json())
    except (OSError, StorageError) as e:
        _undo_init(path, created)
        if isinstance(e, StorageError):
            raise
        raise storage_error(e, f"create repository {path}") from e
    return layout


def _undo_init(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
    else:
        for child in path.iterdir():
            remove_tree(child)


def open_repository(path: Path, roles: Sequence[str], passphrase: bytes | None,
                    now: datetime | None = None) -> FileRepository:
    """Open the repository at ``path`` with signers loaded for ``roles``.

    Raises:
        RepositoryError: not a repository, in the old layout, or its metadata is missing
            or corrupt.
        SigningKeyError: a needed key is missing, wrong or cannot be decrypted.
    """
    layout = RepoLayout(path)
    check_layout(layout)
    if not layout.exists():
        raise RepositoryError(f"not a fleetup repository: {path} (run `fleetup repo init`)")
    config = RepoConfig.load(layout.config)
    repo = FileRepository(layout, config, now=now)
    root = repo.root()
    for role in roles:
        keyids = set(root.roles[role].keyids)
        key_file = key_path(layout.keys, role)
        try:
            signer = load_signer(key_file, passphrase, keyids, role)
        except SigningKeyError:
            # A rotation killed after publishing its new root left the new key pending.
            pending = _pending_key(key_file)
            if not pending.exists():
                raise
            signer = load_signer(pending, passphrase, keyids, role)
            _adopt_pending_key(pending, key_file)
        repo.signers[role] = [signer]
    return repo


def _pending_key(key_file: Path) -> Path:
    return key_file.with_name(f"{key_file.name}.new")


def _adopt_pending_key(pending: Path, key_file: Path) -> None:
    try:
        os.replace(pending, key_file)
        fsync_dir(key_file.parent)
    except OSError as e:
        raise storage_error(e, f"install the new key {key_file}") from e


# -- releases -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """What ``fleetup release add`` was asked to publish."""

    src: Path
    app: str
    version: str
    platform: str
    channels: tuple[str, ...] = ("stable",)
    update_type: UpdateType | None = None
    notes: str = ""
    health: HealthSpec | None = None
    min_from: str | None = None
    rollout: str | None = None


@dataclass(frozen=True, slots=True)
class AddedRelease:
    """What was published: the release's facts, archive size and delta sizes."""

    facts: ReleaseFacts
    archive_size: int
    deltas: dict[str, int] = field(default_factory=dict)
    skipped_deltas: dict[str, int] = field(default_factory=dict)


def releases_of(targets: Targets) -> dict[str, tuple[TargetFile, ReleaseFacts]]:
    """Every release target in ``targets`` with its facts, by target path."""
    found: dict[str, tuple[TargetFile, ReleaseFacts]] = {}
    for path, target in targets.targets.items():
        custom = target.custom.get("fleetup") if target.custom else None
        if isinstance(custom, dict) and custom.get("kind") == "release":
            found[path] = (target, ReleaseFacts.from_custom(target.custom, path))
    return found


def add_release(path: Path, request: ReleaseRequest, *, passphrase: bytes | None = None,
                now: datetime | None = None, progress: Progress | None = None) -> AddedRelease:
    """Publish the tree ``request.src`` as a new release, with deltas from recent ones.

    Raises:
        UsageError: a bad name, version, schedule or option.
        VersionError: the version is not PEP 440.
        SourceTreeError: the source is missing, unreadable, or has an escaping link.
        DuplicateReleaseError: the version exists for that app and platform.
        SigningKeyError: a key is missing, wrong or cannot be decrypted.
        StorageError: the disk refused; the repository is as it was.
    """
    say = progress or (lambda _msg: None)
    check_name("app", request.app)
    check_name("platform", request.platform)
    for channel in request.channels:
        check_name("channel", channel)
    version = parse_version(request.version)
    if request.min_from is not None:
        parse_version(request.min_from)
    repo = open_repository(path, [Targets.type, Snapshot.type, Timestamp.type], passphrase, now)
    with repo_lock(repo.layout):
        repo.check_not_expired(Root.type, "rotate the root key (`fleetup keys rotate ROOT`)")
        existing = [f for _, f in releases_of(repo.targets()).values()
                    if f.app == request.app and f.platform == request.platform]
        for facts in existing:
            if facts.parsed_version == version:
                raise DuplicateReleaseError(
                    f"{request.app} {facts.version} ({request.platform}) is already published")
        manifest = scan_tree(request.src)
        facts = _facts_for(request, version, manifest, existing, repo.now)
        with _staging(repo.layout) as staging:
            say(f"archiving {manifest.size} bytes in {len(manifest.entries)} entries")
            added = _stage_release(repo, request.src, facts, manifest, existing, staging, say)
            repo.commit()
        return added


def _facts_for(request: ReleaseRequest, version: Version, manifest: TreeManifest,
               existing: list[ReleaseFacts], now: datetime) -> ReleaseFacts:
    older = [f.parsed_version for f in existing if f.parsed_version < version]
    update_type = request.update_type or derive_update_type(max(older, default=None), version)
    rollout = PhasedRollout.parse(request.rollout, now) if request.rollout else None
    return ReleaseFacts(
        app=request.app, version=str(version), platform=request.platform,
        channels=tuple(dict.fromkeys(request.channels)), update_type=update_type,
        tree_digest=manifest.digest(), tree_size=manifest.size,
        tree_entries=len(manifest.entries), published=now.isoformat(),
        tree_depth=manifest.depth(), notes=request.notes, health=request.health,
        min_from=str(parse_version(request.min_from)) if request.min_from else None,
        rollout=rollout)


@contextlib.contextmanager
def _staging(layout: RepoLayout) -> Iterator[Path]:
    """A fresh staging directory, removed afterwards."""
    try:
        layout.staging.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=layout.staging))
    except OSError as e:
        with contextlib.suppress(OSError):
            layout.staging.rmdir()
        raise storage_error(e, f"create a staging directory in {layout.root}") from e
    try:
        yield tmp
    except OSError as e:  # writes into the staging directory that are not wrapped below
        raise storage_error(e, f"stage files in {layout.staging}") from e
    finally:
        remove_tree(tmp)
        with contextlib.suppress(OSError):
            layout.staging.rmdir()


def _stage_release(repo: FileRepository, src: Path, facts: ReleaseFacts,
                   manifest: TreeManifest, existing: list[ReleaseFacts], staging: Path,
                   say: Progress) -> AddedRelease:
    archive = staging / "release.tar.zst"
    try:
        with archive.open("wb") as out:
            build_archive(src, manifest, out, repo.config.compression_level)
    except OSError as e:
        raise storage_error(e, "write the archive") from e
    release_target = TargetFile.from_file(facts.target_path, str(archive), ["sha256"])
    release_target.unrecognized_fields["custom"] = facts.to_custom()
    # Deltas are made against the archive unpacked again, not the source directory,
    # so they produce exactly what was signed even if the source changes meanwhile.
    new_tree = staging / "new"
    with archive.open("rb") as f:
        extract_archive(f, new_tree, max_size=facts.tree_size, max_entries=facts.tree_entries)
    deltas, skipped = _stage_deltas(repo, facts, manifest, new_tree, existing,
                                    release_target.length, staging, say)
    index_file = staging / "index.json"
    releases = [f.target_path for f in existing] + [facts.target_path]
    index_file.write_bytes(render_index(facts.app, facts.platform, releases))
    index_target = TargetFile.from_file(index_target_path(facts.app, facts.platform),
                                        str(index_file), ["sha256"])
    with repo.edit_targets() as targets:
        targets.targets[release_target.path] = release_target
        targets.targets[index_target.path] = index_target
        for target, source in deltas:
            targets.targets[target.path] = target
            repo.stage_target(source, target)
    repo.stage_target(archive, release_target)
    repo.stage_target(index_file, index_target)
    repo.do_snapshot()
    repo.do_timestamp()
    return AddedRelease(facts, release_target.length,
                        {t.unrecognized_fields["custom"]["fleetup"]["from"]: t.length
                         for t, _ in deltas}, skipped)


def delta_budget(full_size: int) -> int:
    """The largest delta worth publishing beside a full archive of ``full_size`` bytes.

    A delta is one more signed file and a slower path on the device: it is published only
    when it saves a tenth of the download or more (the benchmark asks the same).
    """
    return full_size * 9 // 10


def _stage_deltas(repo: FileRepository, facts: ReleaseFacts, manifest: TreeManifest,
                  new_tree: Path, existing: list[ReleaseFacts], full_size: int,
                  staging: Path, say: Progress
                  ) -> tuple[list[tuple[TargetFile, Path]], dict[str, int]]:
    older = sorted((f for f in existing if f.parsed_version < facts.parsed_version),
                   key=lambda f: f.parsed_version, reverse=True)[:repo.config.delta_count]
    staged: list[tuple[TargetFile, Path]] = []
    skipped: dict[str, int] = {}
    targets = repo.targets()
    for old in older:
        old_tree = staging / f"old-{old.version}"
        old_manifest = _unpack_release(repo, targets.targets[old.target_path], old, old_tree)
        methods = {Method(m) for m in repo.config.delta_methods}
        worth = delta_budget(full_size)
        patch = staging / f"delta-{old.version}.fdelta"
        try:
            with patch.open("wb") as out:
                used = make_delta(old_tree, old_manifest, new_tree, manifest, out,
                                  methods=methods, give_up_above=worth)
        except DeltaNotWorthItError:
            say(f"no delta from {old.version}: the trees share too little")
            skipped[old.version] = full_size
            remove_tree(old_tree)
            patch.unlink(missing_ok=True)
            continue
        delta = DeltaFacts(facts.app, facts.platform, old.version, facts.version,
                           facts.target_path, DELTA_FORMAT,
                           tuple(sorted(used - BASE_METHODS)))
        size = patch.stat().st_size
        say(f"delta from {old.version}: {size} bytes (full archive {full_size})")
        remove_tree(old_tree)
        if size > worth:
            skipped[old.version] = size
            continue
        target = TargetFile.from_file(delta.target_path, str(patch), ["sha256"])
        target.unrecognized_fields["custom"] = delta.to_custom()
        staged.append((target, patch))
    return staged, skipped


def _unpack_release(repo: FileRepository, target: TargetFile, facts: ReleaseFacts,
                    dest: Path) -> TreeManifest:
    source = target_file_name(repo.layout, target)
    try:
        with source.open("rb") as f:
            target.verify_length_and_hashes(f)
            f.seek(0)
            manifest = extract_archive(f, dest, max_size=facts.tree_size,
                                       max_entries=facts.tree_entries)
    except FileNotFoundError:
        raise RepositoryError(f"the archive of {facts.version} is missing: {source}") from None
    except Exception as e:
        if type(e).__module__.startswith("tuf"):
            raise IntegrityError(f"the archive of {facts.version} in the repository is "
                                 f"damaged: {source}") from e
        raise
    if manifest.digest() != facts.tree_digest:
        raise IntegrityError(f"the archive of {facts.version} does not match its signed tree")
    return manifest


def list_releases(path: Path) -> list[tuple[ReleaseFacts, int, list[str]]]:
    """Every release: its facts, archive size, and the versions it has deltas from.

    Raises:
        RepositoryError: not a repository, or corrupt metadata.
    """
    repo = open_repository(path, [], None)
    targets = repo.targets()
    deltas: dict[str, list[str]] = {}
    for target in targets.targets.values():
        body = (target.custom or {}).get("fleetup")
        if isinstance(body, dict) and body.get("kind") == "delta":
            deltas.setdefault(str(body["release"]), []).append(str(body["from"]))
    rows = [(facts, target.length, sorted(deltas.get(p, []), key=parse_version))
            for p, (target, facts) in releases_of(targets).items()]
    return sorted(rows, key=lambda r: (r[0].app, r[0].platform, r[0].parsed_version))


def yank_release(path: Path, *, app: str, version: str, platform: str | None = None,
                 reason: str = "", passphrase: bytes | None = None,
                 now: datetime | None = None) -> list[ReleaseFacts]:
    """Mark a release yanked in signed metadata: never installed, and rolled back from.

    Yanks the version on every platform unless ``platform`` is given.

    Raises:
        ReleaseNotFoundError: no such release.
        SigningKeyError: a key is missing, wrong or cannot be decrypted.
        StorageError: the disk refused; the repository is as it was.
    """
    wanted = parse_version(version)
    repo = open_repository(path, [Targets.type, Snapshot.type, Timestamp.type], passphrase, now)
    with repo_lock(repo.layout):
        matches = [(p, t, f) for p, (t, f) in releases_of(repo.targets()).items()
                   if f.app == app and f.parsed_version == wanted
                   and (platform is None or f.platform == platform)]
        if not matches:
            raise ReleaseNotFoundError(f"no release {app} {version}"
                                       + (f" for {platform}" if platform else ""))
        yanked = []
        with repo.edit_targets() as targets:
            for target_path, target, facts in matches:
                new_facts = facts.yank(reason or "yanked by the publisher")
                target.unrecognized_fields["custom"] = new_facts.to_custom()
                targets.targets[target_path] = target
                yanked.append(new_facts)
        repo.do_snapshot()
        repo.do_timestamp()
        repo.commit()
        return yanked


def refresh_repo(path: Path, *, roles: Sequence[str] = ("snapshot", "timestamp"),
                 passphrase: bytes | None = None, now: datetime | None = None) -> dict[str, int]:
    """Re-sign ``roles`` with fresh expiry dates. Returns the new version of each.

    Raises:
        MetadataExpiredError: a role that is not being re-signed has expired.
        SigningKeyError: a key is missing, wrong or cannot be decrypted.
    """
    order = [r for r in ("root", "targets", "snapshot", "timestamp") if r in roles]
    if not order or len(order) != len(set(roles)):
        raise UsageError(f"roles must be among root, targets, snapshot, timestamp: {roles}")
    repo = open_repository(path, order, passphrase, now)
    with repo_lock(repo.layout):
        for role in ("root", "targets"):
            if role not in order:
                repo.check_not_expired(role, f"re-sign it: `fleetup repo refresh --role {role}`")
        for role in order:
            if role in ("root", "targets"):
                with repo.edit(role):
                    pass
        if "snapshot" in order or "targets" in order:
            repo.do_snapshot(force="snapshot" in order)
        repo.do_timestamp(force=True)
        repo.commit()
        return {role: repo.open(role).signed.version for role in order}


def rotate_key(path: Path, role: str, *, passphrase: bytes | None = None,
               now: datetime | None = None) -> str:
    """Replace ``role``'s key with a new one, in a new root signed by old and new keys.

    Devices that trust only the old root still update: they verify the new root with
    the old root's keys. Returns the new key id.

    Raises:
        UsageError: not a top-level role.
        SigningKeyError: the root key (or the role's old key) is missing or wrong.
        StorageError: the disk refused; the repository and keys are as they were.
    """
    return rotate_keys(path, (role,), passphrase=passphrase, now=now)[role]


ONLINE_ROLES = ("snapshot", "timestamp")


def rotate_keys(path: Path, roles: Sequence[str], *, passphrase: bytes | None = None,
                now: datetime | None = None) -> dict[str, str]:
    """Replace the keys of ``roles`` in one new root; returns each role's new key id.

    Rotating both online roles at once (:data:`ONLINE_ROLES`) is how a repository
    recovers from a fast-forward attack (TUF spec 5.3.11): a device that was served a
    timestamp or snapshot with an inflated version refuses every genuine one as a
    rollback, until the key that signed the inflated one is no longer trusted. The new
    root then makes the device drop its stored timestamp and snapshot, and the
    genuine, lower versions load again.

    Raises:
        UsageError: no role, or not a top-level role.
        SigningKeyError: the root key (or a role's old key) is missing or wrong.
        StorageError: the disk refused; the repository and keys are as they were.
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise UsageError(f"not a role: {(unknown or [''])[0]!r} "
                         "(root, targets, snapshot, timestamp)")
    needed = sorted({"root", *roles, *ONLINE_ROLES})
    repo = open_repository(path, needed, passphrase, now)
    with repo_lock(repo.layout):
        new_signers = {role: generate_key() for role in dict.fromkeys(roles)}
        _stage_rotation(repo, new_signers)
        return _publish_rotation(repo, new_signers, passphrase)


def _stage_rotation(repo: FileRepository, new_signers: Mapping[str, CryptoSigner]) -> None:
    # While the rotation is published, each role's metadata carries signatures by the
    # old and the new key: a client still on the old root and one that already has the
    # new root both verify it, whatever order they fetch files in. (The new root itself
    # must be signed by old and new root keys anyway.)
    for role, signer in new_signers.items():
        repo.signers[role] = [*repo.signers[role], signer]
    with repo.edit_root() as root:
        for role, signer in new_signers.items():
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(signer.public_key, role)
    if "targets" in new_signers:
        with repo.edit_targets():
            pass
    if new_signers.keys() & {"targets", "snapshot"}:
        repo.do_snapshot(force=True)
    repo.do_timestamp(force=True)


def _publish_rotation(repo: FileRepository, new_signers: Mapping[str, CryptoSigner],
                      passphrase: bytes | None) -> dict[str, str]:
    key_files = {role: key_path(repo.layout.keys, role) for role in new_signers}
    pending = {role: _pending_key(key_file) for role, key_file in key_files.items()}
    # The new keys wait beside the old ones until the new root is published: a
    # publisher killed before that keeps using the old keys; one killed after it
    # adopts the pending keys on the next run (see open_repository).
    try:
        for role, signer in new_signers.items():
            save_key(pending[role], signer, passphrase)
        repo.commit(root_last=True)
    except BaseException:
        for file in pending.values():
            file.unlink(missing_ok=True)
        raise
    # Published: the rotation has happened. If a key cannot be moved into place now,
    # the next operation adopts it (open_repository), so this is not a failure.
    for role, file in pending.items():
        with contextlib.suppress(StorageError):
            _adopt_pending_key(file, key_files[role])
    return {role: signer.public_key.keyid for role, signer in new_signers.items()}
