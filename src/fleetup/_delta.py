"""Delta patches between two unpacked release trees.

A patch is made on the trees, not on the compressed archives: compressing first hides
what did not change. Format ``fleetup-delta/1``::

    b"FLDELTA1" + one zstd stream of:
        u32 little-endian header length + header JSON
        payloads, in header order

The header lists every entry of the new tree (dirs, links, files); each file says how
it is made from the old tree:

- ``copy``   the old file ``src`` has the same content (unchanged, renamed or moved);
- ``lit``    its bytes follow literally (the outer zstd stream compresses all literal
             files together, so many small files share one context);
- ``zdict``  a zstd frame compressed with the old file ``src`` as dictionary
             (what ``zstd --patch-from`` does);
- ``bsdiff`` a bsdiff4 patch against the old file ``src``.

:func:`plan_delta` (pure) decides which old file each new file may come from;
:func:`make_delta` tries the encoders and keeps the smallest; :func:`apply_delta`
rebuilds the new tree through :class:`~fleetup._treewriter.TreeWriter`. Files carry no
hashes in the patch: the caller checks the whole rebuilt tree's digest against the
signed facts.
"""

from __future__ import annotations

import json
import math
import posixpath
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import bsdiff4
import zstandard

from fleetup._manifest import Entry, EntryType, TreeManifest
from fleetup._treewriter import TreeWriter
from fleetup.errors import DeltaError, IntegrityError

__all__ = ["DELTA_FORMAT", "PlanItem", "apply_delta", "make_delta", "plan_delta"]

DELTA_FORMAT = "fleetup-delta/1"
MAGIC = b"FLDELTA1"
_OUTER_LEVEL = 19
_INNER_LEVEL = 19
_CHUNK = 1 << 20
# Files above this are delta-coded with zstd only: bsdiff needs ~9x the file in memory.
_BSDIFF_MAX = 32 << 20
# Files above this are not delta-coded at all (zstd dictionary window limit, memory).
_DICT_MAX = 1 << 30
# Largest zstd window the applier accepts for one file.
_MAX_WINDOW_LOG = 31


@dataclass(frozen=True, slots=True)
class PlanItem:
    """How one entry of the new tree may be produced: which old file to start from."""

    entry: Entry
    copy_from: str | None = None
    base: str | None = None


def plan_delta(old: TreeManifest, new: TreeManifest) -> list[PlanItem]:
    """For each new entry: copy it if some old file has its content, else name the old
    file most likely to be similar (same path, else same name elsewhere).

    Pure: decides from the manifests alone.
    """
    old_files = {e.path: e for e in old.entries if e.type is EntryType.FILE}
    by_hash: dict[str, str] = {}
    by_name: dict[str, list[str]] = {}
    for path, entry in sorted(old_files.items()):
        by_hash.setdefault(entry.sha256, path)
        by_name.setdefault(posixpath.basename(path), []).append(path)
    plan: list[PlanItem] = []
    for entry in new.entries:
        if entry.type is not EntryType.FILE:
            plan.append(PlanItem(entry))
            continue
        same = old_files.get(entry.path)
        if same is not None and same.sha256 == entry.sha256:
            plan.append(PlanItem(entry, copy_from=entry.path))
        elif entry.sha256 in by_hash:
            plan.append(PlanItem(entry, copy_from=by_hash[entry.sha256]))
        elif same is not None:
            plan.append(PlanItem(entry, base=entry.path))
        else:
            plan.append(PlanItem(entry, base=_closest_by_name(entry, by_name, old_files)))
    return plan


def _closest_by_name(entry: Entry, by_name: dict[str, list[str]],
                     old_files: dict[str, Entry]) -> str | None:
    candidates = by_name.get(posixpath.basename(entry.path), [])
    if not candidates:
        return None
    return min(candidates, key=lambda p: (abs(old_files[p].size - entry.size), p))


def make_delta(old_dir: Path, old: TreeManifest, new_dir: Path, new: TreeManifest,
               out: BinaryIO) -> None:
    """Write a patch that turns the tree ``old`` (at ``old_dir``) into ``new``.

    Raises:
        DeltaError: a file could not be read or encoded.
    """
    header_entries: list[dict[str, object]] = []
    payloads: list[bytes | Path] = []
    try:
        for item in plan_delta(old, new):
            record, payload = _encode(item, old_dir, new_dir)
            header_entries.append(record)
            if payload is not None:
                payloads.append(payload)
    except OSError as e:
        raise DeltaError(f"cannot read {e.filename}: {e.strerror}") from e
    header = json.dumps({"format": DELTA_FORMAT, "source": old.digest(),
                         "entries": header_entries},
                        separators=(",", ":"), sort_keys=True).encode()
    params = zstandard.ZstdCompressionParameters.from_level(
        _OUTER_LEVEL, window_log=_window_log(max(new.size, 1)), enable_ldm=True)
    out.write(MAGIC)
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
            out, closefd=False) as zw:
        zw.write(struct.pack("<I", len(header)))
        zw.write(header)
        for payload in payloads:
            if isinstance(payload, Path):
                with payload.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        zw.write(chunk)
            else:
                zw.write(payload)


def _encode(item: PlanItem, old_dir: Path, new_dir: Path
            ) -> tuple[dict[str, object], bytes | Path | None]:
    entry = item.entry
    record = entry.to_dict()
    if entry.type is not EntryType.FILE:
        return record, None
    # No per-file hashes: they do not compress, and the caller checks the whole
    # rebuilt tree against the signed digest anyway.
    del record["sha256"]
    if item.copy_from is not None:
        record.update(op="copy", src=item.copy_from)
        return record, None
    new_path = new_dir / entry.path
    if item.base is None or entry.size > _DICT_MAX:
        record.update(op="lit", len=entry.size)
        return record, new_path
    old_bytes = (old_dir / item.base).read_bytes()
    new_bytes = new_path.read_bytes()
    # The literal's cost inside the solid outer stream, estimated on its own.
    best_op, best = "lit", zstandard.ZstdCompressor(level=_INNER_LEVEL).compress(new_bytes)
    zdict = _zdict_encode(old_bytes, new_bytes)
    if len(zdict) < len(best):
        best_op, best = "zdict", zdict
    if max(len(old_bytes), len(new_bytes)) <= _BSDIFF_MAX:
        patch = bsdiff4.diff(old_bytes, new_bytes)
        if len(patch) < len(best):
            best_op, best = "bsdiff", patch
    if best_op == "lit":
        record.update(op="lit", len=entry.size)
        return record, new_path
    record.update(op=best_op, src=item.base, len=len(best))
    return record, best


def _window_log(size: int) -> int:
    return max(20, min(_MAX_WINDOW_LOG, math.ceil(math.log2(size + 1)) + 1))


def _zdict_encode(old: bytes, new: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        _INNER_LEVEL, window_log=_window_log(len(old) + len(new)), enable_ldm=True)
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(new)


def apply_delta(patch: BinaryIO, old_dir: Path, old: TreeManifest, dest: Path, *,
                max_size: int, max_entries: int,
                on_progress: Callable[[int], None] | None = None) -> TreeManifest:
    """Rebuild the new tree into the new directory ``dest`` from ``old_dir`` and a patch.

    ``old`` is the verified manifest of ``old_dir``. Returns the manifest of what was
    written; the caller compares its digest with the signed one.

    Raises:
        DeltaError: the patch is malformed or was made from another tree.
        IntegrityError: a rebuilt file does not have the SHA-256 the patch names.
        UnsafeArchiveError: an entry is refused (see ``TreeWriter``).
        StorageError: the disk refused.
    """
    if patch.read(len(MAGIC)) != MAGIC:
        raise DeltaError("not a fleetup delta patch")
    reader = zstandard.ZstdDecompressor(max_window_size=1 << _MAX_WINDOW_LOG).stream_reader(
        patch, read_size=_CHUNK, closefd=False)
    try:
        header = _read_header(reader)
        if header.get("source") != old.digest():
            raise DeltaError("patch was made from a different tree than the installed one")
        writer = TreeWriter(dest, max_size=max_size, max_entries=max_entries,
                            on_progress=on_progress)
        old_files = {e.path: e for e in old.entries if e.type is EntryType.FILE}
        for record in _entries(header):
            _apply_entry(record, reader, writer, old_dir, old_files)
        return writer.finish()
    except zstandard.ZstdError as e:
        raise DeltaError(f"corrupt patch: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise DeltaError(f"malformed patch header: {e}") from e


def _read_header(reader: BinaryIO) -> dict[str, object]:
    raw_len = _read_exact(reader, 4)
    (length,) = struct.unpack("<I", raw_len)
    if length > 256 << 20:
        raise DeltaError("patch header is implausibly large")
    header = json.loads(_read_exact(reader, length))
    if not isinstance(header, dict) or header.get("format") != DELTA_FORMAT:
        raise DeltaError("unknown delta format")
    return header


def _entries(header: dict[str, object]) -> list[dict[str, object]]:
    entries = header["entries"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DeltaError("patch header has no entry list")
    return entries


def _apply_entry(record: dict[str, object], reader: BinaryIO, writer: TreeWriter,
                 old_dir: Path, old_files: dict[str, Entry]) -> None:
    entry = Entry.from_dict({"sha256": "", **record})
    if entry.type is EntryType.DIR:
        writer.add_dir(entry.path, entry.mode)
        return
    if entry.type is EntryType.LINK:
        writer.add_link(entry.path, entry.target)
        return
    op = record.get("op")
    if op == "lit":
        writer.add_file(entry.path, entry.mode, entry.size, _read_chunks(reader, entry.size))
    else:
        src = _source(record, old_files)
        if op == "copy":
            written = writer.add_file(entry.path, entry.mode, entry.size,
                                      _file_chunks(old_dir / src))
            if written.sha256 != old_files[src].sha256:
                raise IntegrityError(f"{src}: installed file does not match its manifest")
            return
        payload = _read_exact(reader, _length(record, entry))
        data = _decode(str(op), (old_dir / src).read_bytes(), payload, entry.size)
        writer.add_file(entry.path, entry.mode, entry.size, iter((data,)))


def _source(record: dict[str, object], old_files: dict[str, Entry]) -> str:
    src = record.get("src")
    if not isinstance(src, str) or src not in old_files:
        raise DeltaError(f"patch refers to {src!r}, which is not a file of the installed tree")
    return src


def _length(record: dict[str, object], entry: Entry) -> int:
    length = record.get("len")
    if not isinstance(length, int) or length < 0 or length > (256 << 20) + 2 * entry.size:
        raise DeltaError(f"{entry.path}: bad payload length")
    return length


def _decode(op: str, old: bytes, payload: bytes, size: int) -> bytes:
    if op == "zdict":
        dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        decompressor = zstandard.ZstdDecompressor(
            dict_data=dictionary, max_window_size=1 << _MAX_WINDOW_LOG)
        return decompressor.decompress(payload, max_output_size=size)
    if op == "bsdiff":
        try:
            return bytes(bsdiff4.patch(old, payload))
        except Exception as e:
            raise DeltaError(f"bsdiff patch does not apply: {e}") from e
    raise DeltaError(f"unknown patch operation {op!r}")


def _read_exact(reader: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining:
        chunk = reader.read(min(remaining, _CHUNK))
        if not chunk:
            raise DeltaError("patch ends early")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_chunks(reader: BinaryIO, n: int) -> Iterator[bytes]:
    remaining = n
    while remaining:
        chunk = reader.read(min(remaining, _CHUNK))
        if not chunk:
            raise DeltaError("patch ends early")
        remaining -= len(chunk)
        yield chunk


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
