"""Durable, atomic changes to files and symlinks: temp file, fsync, rename, fsync dir.

After a crash or power cut at any instant, each path holds either its old content or
its new content, never a mix. Every write of persisted state in fleetup goes through
these functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from fleetup.errors import StorageError

__all__ = ["atomic_symlink", "atomic_write", "fsync_dir", "storage_error"]


def storage_error(error: OSError, doing: str) -> StorageError:
    """Wrap an ``OSError`` in a one-line :class:`StorageError` naming what failed."""
    reason = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
    }.get(error.errno or 0, error.strerror or str(error))
    where = f" ({error.filename})" if error.filename else ""
    return StorageError(f"cannot {doing}: {reason}{where}")


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises:
        StorageError: the disk refused (full, read-only, permissions); ``path`` is
            unchanged and no temp file is left behind.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(e, f"write {path}") from e


def atomic_symlink(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` in one rename; never a moment without it.

    Raises:
        StorageError: the disk refused; ``link`` is unchanged.
    """
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(e, f"point {link} at {target}") from e
