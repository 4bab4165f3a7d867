"""Every refused operation leaves the repository byte-for-byte as it was.

Each case fingerprints the whole repository directory (paths, types, modes, content
hashes) before and after. The disk-full sweep fails the k-th low-level write of an
operation, for every k, and checks the same, then that the operation still succeeds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetup.errors import (
    DuplicateReleaseError,
    FleetupError,
    MetadataExpiredError,
    ReleaseNotFoundError,
    RepositoryError,
    SigningKeyError,
    SourceTreeError,
    StorageError,
    UsageError,
    VersionError,
)
from fleetup.repository import (
    ROLES,
    ReleaseRequest,
    add_release,
    init_repo,
    open_repository,
    refresh_repo,
    rotate_key,
    yank_release,
)
from tests.support.trees import Link, fingerprint, make_tree, sample_app
from tests.unit.repository.conftest import PLATFORM

Operation = Callable[[Path, Path], Any]


def add(version: str, src: str = "good", rollout: str | None = None,
        **kwargs: Any) -> Operation:
    def run(repo: Path, trees: Path) -> Any:
        request = ReleaseRequest(trees / src, "hello", version, PLATFORM, rollout=rollout)
        return add_release(repo, request, **kwargs)
    return run


@pytest.fixture
def trees(tmp_path: Path) -> Path:
    root = tmp_path / "trees"
    sample_app(root / "one", "1.0.0", payload_size=2000)
    sample_app(root / "good", "1.1.0", payload_size=2000)
    make_tree(root / "escaping", {"ok": "x", "bin/evil": Link("../../etc/passwd")})
    make_tree(root / "escaping-chain", {"a": Link("b"), "b": Link("../outside")})
    make_tree(root / "fifo-parent", {"ok": "x"})
    os.mkfifo(root / "fifo-parent" / "pipe")
    (root / "a-file").write_text("not a directory")
    return root


@pytest.fixture
def published(tmp_path: Path, trees: Path) -> Path:
    repo = tmp_path / "repo"
    init_repo(repo)
    add("1.0.0", "one")(repo, trees)
    return repo


def swap_key_from_another_repo(repo: Path, tmp: Path, role: str = "targets") -> None:
    other = tmp / "other-repo"
    init_repo(other)
    shutil.copy(other / "keys" / f"{role}.key", repo / "keys" / f"{role}.key")


CASES: dict[str, tuple[Callable[[Path, Path], None] | None, Operation, type[FleetupError],
                       str]] = {
    "missing-source": (None, add("1.1.0", "nowhere"), SourceTreeError, "not a directory"),
    "source-is-a-file": (None, add("1.1.0", "a-file"), SourceTreeError, "not a directory"),
    "escaping-symlink": (None, add("1.1.0", "escaping"), SourceTreeError,
                         "bin/evil -> ../../etc/passwd points outside the tree"),
    "escaping-chain": (None, add("1.1.0", "escaping-chain"), SourceTreeError,
                       "points outside the tree"),
    "fifo": (None, add("1.1.0", "fifo-parent"), SourceTreeError, "pipe: not a regular file"),
    "not-a-version": (None, add("latest"), VersionError, "not a version"),
    "duplicate": (None, add("1.0.0"), DuplicateReleaseError, "hello 1.0.0 .* already"),
    "duplicate-other-spelling": (None, add("1.0"), DuplicateReleaseError,
                                 "1.0.0 .* is already published"),
    "bad-rollout": (None, add("1.1.0", rollout="50,10@1h"), UsageError, "rollout steps"),
    "missing-key": (lambda repo, tmp: (repo / "keys/targets.key").unlink(), add("1.1.0"),
                    SigningKeyError, "the targets key is missing"),
    "wrong-key": (swap_key_from_another_repo, add("1.1.0"), SigningKeyError,
                  "not a targets key of this repository's root"),
    "garbage-key": (lambda repo, tmp: (repo / "keys/snapshot.key").write_text("junk"),
                    add("1.1.0"), SigningKeyError, "wrong passphrase or not a PEM key"),
    "key-unexpectedly-encrypted": (None, add("1.1.0", passphrase=b"pw"), SigningKeyError,
                                   "not encrypted: drop --passphrase-env"),
    "yank-unknown": (None, lambda repo, t: yank_release(repo, app="hello", version="9"),
                     ReleaseNotFoundError, "no release hello 9"),
    "yank-missing-key": (lambda repo, tmp: (repo / "keys/timestamp.key").unlink(),
                         lambda repo, t: yank_release(repo, app="hello", version="1.0.0"),
                         SigningKeyError, "timestamp key is missing"),
    "refresh-expired-targets": (
        None, lambda repo, t: refresh_repo(repo, now=datetime.now(UTC) + timedelta(days=91)),
        MetadataExpiredError, "targets metadata expired"),
    "add-expired-root": (
        None, add("1.1.0", now=datetime.now(UTC) + timedelta(days=366)),
        MetadataExpiredError, "root metadata expired"),
    "rotate-wrong-root-key": (lambda repo, tmp: swap_key_from_another_repo(repo, tmp, "root"),
                              lambda repo, t: rotate_key(repo, "timestamp"),
                              SigningKeyError, "not a root key"),
    "not-a-repository": (lambda repo, tmp: (repo / "fleetup-repo.json").unlink(),
                         add("1.1.0"), RepositoryError, "not a fleetup repository"),
    "corrupt-metadata": (lambda repo, tmp:
                         (repo / "public/metadata/2.targets.json").write_text("{"),
                         add("1.1.0"), RepositoryError, "metadata is corrupt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_operation_leaves_the_repository_unchanged(
        published: Path, trees: Path, tmp_path: Path, case: str) -> None:
    prepare, operation, error, message = CASES[case]
    if prepare:
        prepare(published, tmp_path)
    before = fingerprint(published)
    with pytest.raises(error, match=message) as info:
        operation(published, trees)
    assert "\n" not in str(info.value)
    assert fingerprint(published) == before


@pytest.mark.parametrize("passphrase", [None, b"wrong"])
def test_encrypted_keys_without_the_right_passphrase(tmp_path: Path, trees: Path,
                                                     passphrase: bytes | None) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, passphrase=b"right")
    before = fingerprint(repo)
    expected = "it is encrypted: pass --passphrase-env" if passphrase is None \
        else "wrong passphrase"
    for operation in (add("1.1.0", passphrase=passphrase),
                      lambda r, t: refresh_repo(r, passphrase=passphrase),
                      lambda r, t: rotate_key(r, "root", passphrase=passphrase)):
        with pytest.raises(SigningKeyError, match=expected):
            operation(repo, trees)
        assert fingerprint(repo) == before
    add("1.1.0", passphrase=b"right")(repo, trees)


def test_another_publisher_holding_the_lock(published: Path, trees: Path) -> None:
    before = fingerprint(published)
    fd = os.open(published, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(RepositoryError, match="another publisher is changing"):
            add("1.1.0")(published, trees)
    finally:
        os.close(fd)
    assert fingerprint(published) == before
    add("1.1.0")(published, trees)


# -- the disk fills up at every write in turn --------------------------------------------

PRIMITIVES = ("write", "fsync", "replace", "link", "mkdir", "rename")


class FullDiskOnce:
    """Fails the k-th call of the primitives above with ENOSPC; counts every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.failed = False
        self._mkdir = os.mkdir
        for name in PRIMITIVES:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if real is self._mkdir and os.path.lexists(args[0]):
                return real(*args, **kwargs)    # the kernel says EEXIST before ENOSPC
            self.calls += 1
            if self.calls == self.fail_at:
                self.failed = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)
        return call


def sweep(baseline: Path, tmp_path: Path, operation: Callable[[Path], Any]) -> int:
    """Run ``operation`` on a copy of ``baseline`` failing at write 1, 2, ... until it
    no longer reaches the failure; returns how many failure points were checked."""
    fail_at = 0
    while True:
        fail_at += 1
        repo = tmp_path / f"copy-{fail_at}"
        shutil.copytree(baseline, repo, symlinks=True)
        before = fingerprint(repo)
        with pytest.MonkeyPatch.context() as monkeypatch:
            disk = FullDiskOnce(monkeypatch, fail_at)
            try:
                operation(repo)
            except StorageError as e:
                error: StorageError | None = e
            else:
                error = None
        if error is None and disk.failed:
            # Only a step after the commit point may absorb a failure (a rotation's key
            # move, redone by the next run): the operation must then be complete, with
            # every key loadable and the repository usable.
            open_repository(repo, list(ROLES), None)
            refresh_repo(repo)
            shutil.rmtree(repo)
            continue
        if error is None:
            return fail_at - 1
        assert disk.failed, error
        assert "no space left on device" in str(error)
        assert fingerprint(repo) == before, f"repository changed by a failure at {fail_at}"
        operation(repo)                      # the disk has room again: it works
        shutil.rmtree(repo)


@pytest.mark.slow
def test_disk_full_at_every_write_of_a_first_release(tmp_path: Path, trees: Path) -> None:
    # The first release of an app also creates its directories under targets/.
    repo = tmp_path / "empty-repo"
    init_repo(repo)
    checked = sweep(repo, tmp_path / "sweep", lambda r: add("1.0.0", "one")(r, trees))
    assert checked >= 20


@pytest.mark.slow
def test_disk_full_at_every_write_of_a_release_with_a_delta(
        published: Path, trees: Path, tmp_path: Path) -> None:
    checked = sweep(published, tmp_path / "sweep", lambda r: add("1.1.0")(r, trees))
    assert checked >= 30


@pytest.mark.parametrize("operation", ["yank", "refresh", "rotate-root", "rotate-targets",
                                       "rotate-timestamp"])
def test_disk_full_at_every_write_leaves_the_repository_unchanged(
        published: Path, trees: Path, tmp_path: Path, operation: str) -> None:
    run: Callable[[Path], Any] = {
        "yank": lambda repo: yank_release(repo, app="hello", version="1.0.0"),
        "refresh": lambda repo: refresh_repo(repo, roles=("targets", "snapshot", "timestamp")),
        "rotate-root": lambda repo: rotate_key(repo, "root"),
        "rotate-targets": lambda repo: rotate_key(repo, "targets"),
        "rotate-timestamp": lambda repo: rotate_key(repo, "timestamp"),
    }[operation]
    checked = sweep(published, tmp_path / "sweep", run)
    assert checked >= 8      # every operation writes several files; all were hit


def test_staging_is_removed_after_a_failure_and_after_a_killed_publisher(
        published: Path, trees: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise StorageError("injected")

    with monkeypatch.context() as patched:
        patched.setattr("fleetup.repository._store.FileRepository.commit", fail)
        with pytest.raises(StorageError):
            add("1.1.0")(published, trees)
    assert not (published / ".staging").exists()

    # What a SIGKILLed publisher leaves behind is cleared by the next one to take the lock,
    # even if that one then refuses to do anything.
    leftover = published / ".staging" / "tmp-killed" / "new"
    leftover.mkdir(parents=True)
    (leftover / "big").write_bytes(b"x" * 1000)
    leftover.chmod(0o500)
    with pytest.raises(DuplicateReleaseError):
        add("1.0.0")(published, trees)
    assert not (published / ".staging").exists()


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_a_rotation_killed_after_publishing_is_completed_by_the_next_run(
        published: Path, monkeypatch: pytest.MonkeyPatch, role: str) -> None:
    from fleetup.repository import _publisher

    with monkeypatch.context() as killed:  # dies right after the new root is published
        killed.setattr(_publisher, "_adopt_pending_key", lambda pending, key_file: None)
        rotate_key(published, role)
    keys = published / "keys"
    assert (keys / f"{role}.key.new").exists()
    # The next operation adopts the pending key instead of refusing the old one.
    repository = open_repository(published, list(ROLES), None)
    assert not (keys / f"{role}.key.new").exists()
    assert repository.signers[role][0].public_key.keyid in repository.root().roles[role].keyids
    refresh_repo(published)


def test_a_rotation_killed_before_publishing_keeps_the_old_key(
        published: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = fingerprint(published)

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr("fleetup.repository._store.FileRepository.commit", killed)
        with pytest.raises(KeyboardInterrupt):
            rotate_key(published, "targets")
    assert fingerprint(published) == before
    refresh_repo(published, roles=("targets", "snapshot", "timestamp"))
