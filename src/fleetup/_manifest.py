"""The manifest of an unpacked release tree: paths, types, modes, sizes and SHA-256s.

Its digest rides in every release's signed facts, so a tree the device rebuilt from a
delta, or a tree installed long ago, is checked against signed data without the full
archive. The model and digest are pure; :func:`scan_tree` is the one function that
reads a directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fleetup._paths import PathRejectedError, check_member_path, link_escapes, path_depth
from fleetup.errors import SourceTreeError

__all__ = ["Entry", "EntryType", "TreeManifest", "hash_file", "scan_tree"]

_CHUNK = 1 << 20


class EntryType(StrEnum):
    """The kinds of entry a release tree may hold; anything else is refused."""

    DIR = "dir"
    FILE = "file"
    LINK = "link"


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a tree. ``sha256``/``size`` for files, ``target`` for links."""

    path: str
    type: EntryType
    mode: int = 0o644
    size: int = 0
    sha256: str = ""
    target: str = ""

    def to_dict(self) -> dict[str, object]:
        """The canonical form hashed into the tree digest."""
        if self.type is EntryType.FILE:
            return {"path": self.path, "type": "file", "mode": self.mode,
                    "size": self.size, "sha256": self.sha256}
        if self.type is EntryType.LINK:
            return {"path": self.path, "type": "link", "target": self.target}
        return {"path": self.path, "type": "dir", "mode": self.mode}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Entry:
        """Inverse of :meth:`to_dict`. Raises ``ValueError``/``KeyError`` on bad input."""
        kind = EntryType(str(data["type"]))
        path = check_member_path(str(data["path"]))
        if kind is EntryType.FILE:
            return cls(path, kind, _int(data["mode"]) & 0o777, _int(data["size"]),
                       str(data["sha256"]))
        if kind is EntryType.LINK:
            return cls(path, kind, 0o777, target=str(data["target"]))
        return cls(path, kind, _int(data["mode"]) & 0o777)


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TreeManifest:
    """A whole tree, entries sorted by path (parents before children)."""

    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> TreeManifest:
        return cls(tuple(sorted(entries, key=lambda e: e.path.split("/"))))

    @property
    def size(self) -> int:
        """Total bytes of regular files: what unpacking writes."""
        return sum(e.size for e in self.entries)

    def depth(self) -> int:
        """How many levels deep the tree goes (0 when empty): a signed bound on unpacking."""
        return max((path_depth(e.path) for e in self.entries), default=0)

    def digest(self) -> str:
        """``sha256:<hex>`` over the canonical JSON of the entries."""
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    def to_json(self) -> bytes:
        body = [e.to_dict() for e in self.entries]
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TreeManifest:
        """Parse a manifest written by :meth:`to_json`.

        Raises:
            ValueError: the data is not a manifest.
        """
        try:
            raw = json.loads(data)
            if not isinstance(raw, list):
                raise ValueError("manifest is not a list")
            return cls.of(Entry.from_dict(item) for item in raw)
        except (KeyError, TypeError, PathRejectedError) as e:
            raise ValueError(f"malformed manifest: {e}") from e

    def by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries}

    def links(self) -> dict[str, str]:
        return {e.path: e.target for e in self.entries if e.type is EntryType.LINK}

    def escaping_link(self) -> Entry | None:
        """The first symlink that leads outside the tree, or ``None``."""
        links = self.links()
        for entry in self.entries:
            if entry.type is EntryType.LINK and link_escapes(entry.path, entry.target, links):
                return entry
        return None

    def diff(self, other: TreeManifest) -> list[str]:
        """Paths that differ between two manifests (added, removed or changed)."""
        mine, theirs = self.by_path(), other.by_path()
        return sorted(p for p in mine.keys() | theirs.keys() if mine.get(p) != theirs.get(p))


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def scan_tree(root: Path) -> TreeManifest:
    """Read the manifest of the directory ``root``.

    Raises:
        SourceTreeError: ``root`` is missing or unreadable, holds a device, FIFO or
            socket, a world-writable file or directory, a name too long or too deep
            (see ``_paths``), or a symlink that leads outside the tree.
    """
    if not root.is_dir():
        raise SourceTreeError(f"not a directory: {root}")
    try:
        manifest = TreeManifest.of(_walk(root))
    except OSError as e:
        raise SourceTreeError(f"cannot read {e.filename or root}: {e.strerror}") from e
    escaping = manifest.escaping_link()
    if escaping is not None:
        raise SourceTreeError(
            f"symlink {escaping.path} -> {escaping.target} points outside the tree"
        )
    return manifest


def _walk(root: Path) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            try:
                check_member_path(rel)  # e.g. a backslash, which no device would unpack
            except PathRejectedError as e:
                raise SourceTreeError(f"{rel!r}: {e}") from None
            st = full.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o002:
                raise SourceTreeError(f"{rel}: world-writable (mode {stat.S_IMODE(st.st_mode):o});"
                                      " devices refuse it: chmod o-w")
            if stat.S_ISLNK(st.st_mode):
                yield Entry(rel, EntryType.LINK, 0o777, target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(rel, EntryType.DIR, stat.S_IMODE(st.st_mode) & 0o777)
            elif stat.S_ISREG(st.st_mode):
                digest, size = hash_file(full)
                yield Entry(rel, EntryType.FILE, stat.S_IMODE(st.st_mode) & 0o777, size, digest)
            else:
                raise SourceTreeError(f"{rel}: not a regular file, directory or symlink")


def _raise(error: OSError) -> None:
    raise error
