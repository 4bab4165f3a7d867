"""atomic_write / atomic_symlink: old or new content, never a mix, never a temp file left.

Disk errors are injected through ``os`` so each failure point is hit deterministically;
the real full disk is exercised by the publisher's integration tests on a tmpfs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from fleetup._atomic import atomic_symlink, atomic_write, fsync_dir, storage_error
from fleetup.errors import StorageError


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_creates_and_replaces_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write(target, b"two" * 100_000, mode=0o600)
    assert target.read_bytes() == b"two" * 100_000
    assert target.stat().st_mode & 0o777 == 0o600
    assert listing(tmp_path) == ["state.json"]


def test_atomic_write_of_empty_data(tmp_path: Path) -> None:
    atomic_write(tmp_path / "empty", b"")
    assert (tmp_path / "empty").read_bytes() == b""


def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str, err: int, after: int = 0) -> None:
    real = getattr(os, name)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize(("call", "after"), [
    ("write", 0),      # full before the first byte
    ("write", 1),      # full part-way (the data is written in several calls)
    ("fsync", 0),
    ("replace", 0),
])
def test_disk_full_leaves_the_old_content_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, after: int) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    real_write = os.write
    # Small writes so that "part-way" really means some bytes went out first.
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    _fail_on(monkeypatch, call, errno.ENOSPC, after)

    with pytest.raises(StorageError) as info:
        atomic_write(target, b"new content that is longer than one write")
    assert str(info.value).startswith(f"cannot write {target}: no space left on device")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["state.json"]


def test_disk_full_on_a_new_file_leaves_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on(monkeypatch, "write", errno.ENOSPC)
    with pytest.raises(StorageError, match="no space left on device"):
        atomic_write(tmp_path / "new", b"data")
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_read_only_directory_is_a_storage_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on(monkeypatch, "open", errno.EROFS)
    with pytest.raises(StorageError, match="read-only file system"):
        atomic_write(tmp_path / "x", b"data")


def test_atomic_symlink_swaps_the_target_in_one_step(tmp_path: Path) -> None:
    link = tmp_path / "current"
    atomic_symlink(link, "releases/1.0")
    assert os.readlink(link) == "releases/1.0"
    atomic_symlink(link, "releases/2.0")
    assert os.readlink(link) == "releases/2.0"
    assert listing(tmp_path) == ["current"]


def test_atomic_symlink_failure_keeps_the_old_link(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "current"
    atomic_symlink(link, "releases/1.0")
    _fail_on(monkeypatch, "replace", errno.EACCES)
    with pytest.raises(StorageError, match=r"cannot point .*current at releases/2\.0: "
                                           r"permission denied"):
        atomic_symlink(link, "releases/2.0")
    monkeypatch.undo()
    assert os.readlink(link) == "releases/1.0"
    assert listing(tmp_path) == ["current"]


def test_fsync_dir_of_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


@pytest.mark.parametrize(("err", "text"), [
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
    (errno.EPERM, "operation not permitted"),
    (errno.EIO, os.strerror(errno.EIO)),
])
def test_storage_error_names_the_reason_and_the_file(err: int, text: str) -> None:
    error = storage_error(OSError(err, os.strerror(err), "/data/x"), "write the journal")
    assert str(error) == f"cannot write the journal: {text} (/data/x)"
    assert not error.retryable


def test_storage_error_without_errno_or_file() -> None:
    assert str(storage_error(OSError("unexpected end of data"), "read")) == \
        "cannot read: unexpected end of data"
