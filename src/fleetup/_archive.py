"""Release archives: deterministic tar + zstd out, paranoid streaming unpack in.

Building: entries in manifest order, owners 0/0 with no names, mtime 0, modes kept,
symlinks kept; the same tree gives the same bytes. Unpacking treats the archive as
hostile even though its hash was checked: it refuses ``..``, absolute paths, writing
through a symlink, links that lead outside the tree, hard links, devices and FIFOs,
duplicate entries, world-writable entries, and trees that expand past the signed size,
entry count or depth. Every refusal names the entry.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import zstandard

from fleetup._atomic import storage_error
from fleetup._manifest import Entry, EntryType, TreeManifest
from fleetup._paths import MAX_DEPTH
from fleetup._treewriter import TreeWriter
from fleetup.errors import ArchiveError, SourceTreeError, UnsafeArchiveError

__all__ = ["DEFAULT_LEVEL", "MAX_WINDOW", "build_archive", "extract_archive"]

DEFAULT_LEVEL = 10
# Bounds the decompressor's memory whatever a hostile frame header claims.
MAX_WINDOW = 1 << 27
_CHUNK = 1 << 20
# Tar bytes an entry may take besides its data: header, padding, and a PAX header with
# a path and a link target of up to PATH_MAX each. Bounds how much the unpacker
# decompresses, whatever the headers claim (tarfile reads PAX headers into memory).
_ENTRY_OVERHEAD = 12 << 10
_ARCHIVE_OVERHEAD = 64 << 10  # end-of-archive blocks and record padding


def build_archive(src: Path, manifest: TreeManifest, out: BinaryIO,
                  level: int = DEFAULT_LEVEL) -> None:
    """Write ``src`` (described by ``manifest``) to ``out`` as a deterministic tar.zst.

    Raises:
        SourceTreeError: a file changed between scanning and archiving.
        StorageError: the output could not be written.
    """
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    try:
        with compressor.stream_writer(out, closefd=False) as zw, \
                tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in manifest.entries:
                _add_entry(tar, src, entry)
    except OSError as e:
        raise storage_error(e, "write the archive") from e


def _add_entry(tar: tarfile.TarFile, src: Path, entry: Entry) -> None:
    info = tarfile.TarInfo(entry.path)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.type is EntryType.DIR:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.type is EntryType.LINK:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
        tar.addfile(info)
    else:
        info.type = tarfile.REGTYPE
        info.size = entry.size
        with (src / entry.path).open("rb") as f:
            hashed = _HashingReader(f, entry)
            tar.addfile(info, hashed)
        if hashed.hexdigest() != entry.sha256 or hashed.count != entry.size:
            raise SourceTreeError(f"{entry.path} changed while the release was being built")


class _HashingReader:
    """A file wrapper that hashes what ``tarfile`` reads from it."""

    def __init__(self, f: BinaryIO, entry: Entry) -> None:
        self._f = f
        self._entry = entry
        self._h = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        self.count += len(data)
        # A file that shrank since the scan; tarfile would report it as a bare OSError.
        if n > 0 and len(data) < n and self.count < self._entry.size:
            raise SourceTreeError(
                f"{self._entry.path} changed while the release was being built")
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def extract_archive(source: BinaryIO, dest: Path, *, max_size: int, max_entries: int,
                    max_depth: int = MAX_DEPTH,
                    on_progress: Callable[[int], None] | None = None) -> TreeManifest:
    """Unpack a tar.zst from ``source`` into the new directory ``dest``.

    Returns the manifest of what was written, hashed while writing, for the caller to
    compare with the signed digest. ``dest`` must not exist; on any error the caller
    removes it (it is a ``.partial`` directory nobody uses).

    Raises:
        UnsafeArchiveError: an entry is refused; the message names it.
        ArchiveError: the data is not a valid tar.zst.
        StorageError: the disk refused (full, read-only).
    """
    writer = TreeWriter(dest, max_size=max_size, max_entries=max_entries,
                        max_depth=max_depth, on_progress=on_progress)
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    budget = max_size + max_entries * _ENTRY_OVERHEAD + _ARCHIVE_OVERHEAD
    try:
        with decompressor.stream_reader(source, read_size=_CHUNK, closefd=False) as zr, \
                tarfile.open(fileobj=_BoundedReader(zr, budget), mode="r|") as tar:
            for member in tar:
                _unpack_member(writer, tar, member)
        return writer.finish()
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
        raise ArchiveError(f"corrupt archive: {e}") from e
    except OSError as e:
        raise storage_error(e, f"unpack into {dest}") from e


class _BoundedReader(io.RawIOBase):
    """Refuses to decompress more tar bytes than the signed size and entry count allow."""

    def __init__(self, f: BinaryIO, budget: int) -> None:
        super().__init__()
        self._f = f
        self._left = budget
        self._budget = budget

    def read(self, n: int = -1) -> bytes:
        want = self._left + 1 if n < 0 else min(n, self._left + 1)
        data = self._f.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise UnsafeArchiveError(
                f"archive expands past {self._budget} bytes of tar data, more than its "
                "signed size and entry count allow")
        return data

    def readable(self) -> bool:
        return True


def _unpack_member(writer: TreeWriter, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    if member.isdir():
        writer.add_dir(member.name, member.mode)
    elif member.issym():
        writer.add_link(member.name, member.linkname)
    elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        data = tar.extractfile(member)
        if data is None:  # pragma: no cover - regular members always have data
            raise ArchiveError(f"{member.name}: no data")
        writer.add_file(member.name, member.mode, member.size, iter(lambda: data.read(_CHUNK), b""))
    else:
        kind = "hard link" if member.islnk() else "device, FIFO, sparse or special file"
        raise UnsafeArchiveError(f"{member.name}: {kind} not allowed")
