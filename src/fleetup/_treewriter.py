"""Writes a release tree into a new directory, refusing anything unsafe.

Both ways a device builds a tree go through here: unpacking an archive and applying a
delta. Input is hostile until its digest matches the signed one, so the writer refuses
``..``, absolute paths, writing through a symlink, links leading outside the tree,
duplicate entries, entries whose parent is missing, world-writable files and
directories, and more bytes, entries or levels than the signed facts allow (so nothing
unverified creates unbounded structure). It hashes every file as it writes it and
returns the manifest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from fleetup._atomic import storage_error
from fleetup._manifest import Entry, EntryType, TreeManifest
from fleetup._paths import (
    MAX_DEPTH,
    PathRejectedError,
    check_member_path,
    link_escapes,
    parent_through_link,
    path_depth,
)
from fleetup.errors import UnsafeArchiveError

__all__ = ["TreeWriter", "remove_tree"]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeWriter:
    """One tree being written into ``dest``, which it creates.

    Raises (from every method):
        UnsafeArchiveError: an entry is refused; the message names it.
        StorageError: the disk refused (full, read-only).
    """

    def __init__(self, dest: Path, *, max_size: int, max_entries: int,
                 max_depth: int = MAX_DEPTH,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.dest = dest
        self.max_size = max_size
        self.max_entries = max_entries
        self.max_depth = min(max_depth, MAX_DEPTH)
        self.on_progress = on_progress
        self.written = 0
        self.entries: dict[str, Entry] = {}
        self.links: dict[str, str] = {}
        try:
            dest.mkdir(mode=0o755)
        except OSError as e:
            raise storage_error(e, f"create {dest}") from e

    def add_dir(self, name: str, mode: int) -> None:
        path = self._claim(name, mode)
        self._io(lambda: (self.dest / path).mkdir(mode=0o700), path)
        self.entries[path] = Entry(path, EntryType.DIR, mode & 0o777)

    def add_link(self, name: str, target: str) -> None:
        """Record a symlink; links are created in :meth:`finish`, once all are known."""
        path = self._claim(name)
        self.links[path] = target
        self.entries[path] = Entry(path, EntryType.LINK, 0o777, target=target)

    def add_file(self, name: str, mode: int, size: int, chunks: Iterable[bytes]) -> Entry:
        """Write a regular file of the declared ``size`` from ``chunks``."""
        path = self._claim(name, mode)
        if self.written + size > self.max_size:
            raise UnsafeArchiveError(
                f"{path}: tree expands past the signed size of {self.max_size} bytes")
        digest = hashlib.sha256()
        count = 0
        try:
            fd = os.open(self.dest / path, _OPEN_FLAGS, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    count += len(chunk)
                    if count > size:
                        raise UnsafeArchiveError(f"{path}: more data than its declared size")
                    digest.update(chunk)
                    out.write(chunk)
                    if self.on_progress is not None:
                        self.on_progress(len(chunk))
                os.fchmod(out.fileno(), mode & 0o777)
        except OSError as e:
            raise storage_error(e, f"write {self.dest / path}") from e
        if count != size:
            raise UnsafeArchiveError(f"{path}: {count} bytes where {size} were declared")
        self.written += size
        entry = Entry(path, EntryType.FILE, mode & 0o777, size, digest.hexdigest())
        self.entries[path] = entry
        return entry

    def finish(self) -> TreeManifest:
        """Create the symlinks, apply directory modes, and return the manifest."""
        for path, target in sorted(self.links.items()):
            if link_escapes(path, target, self.links):
                raise UnsafeArchiveError(f"{path}: symlink to {target!r} leads outside the tree")
            self._io(functools.partial(os.symlink, target, self.dest / path), path)
        # Deepest first, so a read-only directory was writable while it was filled.
        dirs = [e for e in self.entries.values() if e.type is EntryType.DIR]
        for entry in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
            self._io(functools.partial(os.chmod, self.dest / entry.path, entry.mode), entry.path)
        return TreeManifest.of(self.entries.values())

    def _claim(self, name: str, mode: int = 0) -> str:
        try:
            path = check_member_path(name)
        except PathRejectedError as e:
            raise UnsafeArchiveError(f"{name!r}: {e}") from None
        if path_depth(path) > self.max_depth:
            raise UnsafeArchiveError(
                f"{path}: deeper than the signed {self.max_depth} levels")
        if mode & 0o002:
            # Any local user could change (or, in a directory, add to) code the agent
            # runs; a sticky bit does not help inside an immutable release tree.
            raise UnsafeArchiveError(f"{path}: world-writable (mode {mode & 0o7777:o})")
        if len(self.entries) >= self.max_entries:
            raise UnsafeArchiveError(
                f"{path}: more entries than the signed {self.max_entries}")
        if path in self.entries:
            raise UnsafeArchiveError(f"{path}: duplicate entry")
        through = parent_through_link(path, self.links)
        if through is not None:
            raise UnsafeArchiveError(f"{path}: would be written through symlink {through}")
        parent = path.rpartition("/")[0]
        if parent and (parent not in self.entries
                       or self.entries[parent].type is not EntryType.DIR):
            raise UnsafeArchiveError(f"{path}: its parent directory is not in the tree")
        return path

    def _io(self, action: Callable[[], object], path: str) -> None:
        try:
            action()
        except OSError as e:
            raise storage_error(e, f"write {self.dest / path}") from e


def remove_tree(path: Path) -> None:
    """Remove a directory tree, also one a hostile archive left read-only or deep.

    Iterative, with an explicit stack: a tree thousands of levels deep (which no
    recursion limit survives, ``shutil.rmtree``'s included) goes like any other.
    Symlinks are removed, never followed.

    Raises:
        OSError: the disk refused; what could be removed is gone.
    """
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    stack = [str(path)]
    while stack:
        top = stack[-1]
        subdirs = _remove_files_in(top)
        if subdirs:
            stack.extend(subdirs)
        else:
            os.rmdir(top)
            stack.pop()


def _remove_files_in(directory: str) -> list[str]:
    """Unlink the files and links in ``directory``; return its subdirectories."""
    with contextlib.suppress(OSError):  # a read-only or unreadable directory
        os.chmod(directory, 0o700)
    subdirs = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            else:
                os.unlink(entry.path)
    return subdirs
