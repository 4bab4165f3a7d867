"""Delta patches between two unpacked release trees: make (publisher), apply (device).

A patch is made on the trees, not on the compressed archives: compressing first hides
what did not change. The decisions are pure and live in :mod:`fleetup._delta_plan`;
the byte codecs in :mod:`fleetup._delta_codecs`. This module does the IO around them.

Format ``fleetup-delta/2``::

    b"FLDELTA2"
    8 bytes: the first 8 bytes of the old tree's SHA-256 digest (the tree it applies to)
    n as an unsigned LEB128 (at most 4 bytes), then n bytes: the header, one zstd
        frame (magicless) whose dictionary is the old tree's canonical manifest JSON
        (``TreeManifest.to_json``) and a few common words, so paths the old tree has
        cost a few bytes each
    the segment payloads, back to back, each of the length its header record gives

The header is JSON::

    {"format": "fleetup-delta/2",
     "moves": [[old dir, new dir], ...],  directory renames, applied to every old path
                                          (the longest moved prefix wins)
     "drop": [path, ...],                 old entries (moved paths) not in the new tree
     "put": [entry, ...],                 new or changed entries, in manifest order
     "segments": [segment, ...]}

Every entry of the new tree that is not in ``put`` is the old entry at the same (moved)
path, unchanged; its file is copied from the old tree. A ``put`` entry has the fields
of a manifest entry without ``sha256`` (``path``, ``type``, ``mode``, ``size`` or
``target``); a file also has either ``"from": old path`` (same content elsewhere: a
rename or a copy) or comes from a segment: ``"seg": index`` (left out: the segment of
the previous such file, or 0) and optionally ``"base": old path`` (default: the old
file at its own moved path, if there is one).

A segment carries the files that name it, concatenated in ``put`` order, coded by
``method`` against a *reference*: the distinct bases of its files, concatenated::

    {"method": "lit",    "codec": c, "len": n}               the bytes, compressed
    {"method": "zdict",  "len": n, "context": budget}        one zstd frame whose
        dictionary is the reference preceded by up to ``budget`` bytes of old files near
        the bases (:func:`~fleetup._delta_plan.zdict_context`, recomputed on the device)
    {"method": "hdiff",  "codec": c, "len": n}               an HDiffPatch diff (format
        HDIFF13, no inner compression), compressed
    {"method": "bsdiff", "codec": c, "len": n, "control": k} bsdiff4's control triples
        (k bytes), diff and extra blocks, concatenated, compressed

``codec`` is ``"zstd"`` (a magicless frame) or ``"xz"`` (raw LZMA2 with a dictionary of
``2 ** window`` bytes, ``"window": w``). Files carry no hashes: the caller checks the
whole rebuilt tree against the signed digest.

Bounds a device enforces before it reads or allocates: the header frame (64 MiB
decoded), a segment's reference plus target (``SEGMENT_MAX``, 64 MiB), context
(``CONTEXT_MAX``, 4 MiB), zstd windows (128 MiB), xz dictionaries (64 MiB), an
uncompressed diff (its target plus an eighth plus 1 MiB), the tree's size and entry
count (the signed ones). Literal and zstd-dictionary segments stream; an ``hdiff`` or
``bsdiff`` segment holds its reference, its uncompressed diff and its target twice
(HDiffPatch returns a copy), so applying peaks at about 200 MB in the worst case and at
reference + 2 x target in practice. Every write goes through
:class:`~fleetup._treewriter.TreeWriter`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from fleetup._delta_codecs import (
    Section,
    available_methods,
    bsdiff_apply,
    bsdiff_encode,
    compress,
    decompress_all,
    decompress_chunks,
    hdiff_apply,
    hdiff_encode,
    raw_limit,
    zdict_chunks,
    zdict_encode,
    zstd_frame,
    zstd_stream,
    zstd_unframe,
)
from fleetup._delta_plan import (
    CONTEXT_MAX,
    DELTA_FORMAT,
    SEGMENT_MAX,
    Codec,
    Layout,
    Method,
    Part,
    PlanItem,
    PlannedSegment,
    Recipe,
    Segment,
    SegmentSpec,
    candidate_layouts,
    compose,
    detect_moves,
    header_for,
    plan_delta,
    plan_with_moves,
    segment_memory,
    zdict_context,
)
from fleetup._manifest import Entry, EntryType, TreeManifest
from fleetup._paths import MAX_DEPTH
from fleetup._treewriter import TreeWriter
from fleetup.errors import DeltaError, IntegrityError, StorageError, UnsafeArchiveError

__all__ = [
    "BASE_METHODS",
    "DELTA_FORMAT",
    "DeltaNotWorthItError",
    "Method",
    "PlanItem",
    "applicable",
    "apply_delta",
    "make_delta",
    "plan_delta",
]

# What an agent applies even where hdiffpatch (a dependency, with wheels for manylinux
# x86_64 and aarch64) could not be installed; a delta lists any other method it needs.
BASE_METHODS = frozenset({Method.LIT.value, Method.ZDICT.value, Method.BSDIFF.value})


def applicable(method: str, requires: Collection[str]) -> bool:
    """Whether this installation can apply a delta of this format needing these methods."""
    have = {m.value for m in available_methods()}
    return method == DELTA_FORMAT and set(requires) <= have

MAGIC = b"FLDELTA2"
_CHUNK = 1 << 20
_HEADER_MAX = 64 << 20
_ESTIMATE_LEVEL = 9
# With the old file as dictionary, a related new file compresses far better than alone;
# above this share of its lone size, the two are taken as unrelated.
_UNRELATED = 0.9
# bsdiff4 is slow and needs ~17 bytes of memory per input byte to diff: it is tried on
# small files only when HDiffPatch is there, on larger ones when it is the only differ.
_BSDIFF_BESIDE_HDIFF = 1 << 20
_BSDIFF_ALONE = 16 << 20


def make_delta(old_dir: Path, old: TreeManifest, new_dir: Path, new: TreeManifest,
               out: BinaryIO, *, methods: Collection[Method] | None = None,
               give_up_above: int | None = None) -> frozenset[str]:
    """Write a patch that turns the tree ``old`` (at ``old_dir``) into ``new``.

    ``methods`` restricts the encodings (default: all this installation has; ``lit``
    is always allowed), e.g. to leave out ``hdiff`` for devices without HDiffPatch.
    Several layouts are encoded and the smallest patch is kept. Returns the methods
    the patch uses: a device must have all of them to apply it.

    ``give_up_above``: the size of the full archive. When the quick estimates already
    say the patch would not be smaller, :class:`DeltaNotWorthItError` is raised before
    the costly encoding (trees that share little make patches the size of the archive).

    Raises:
        DeltaError: a file could not be read or encoded.
    """
    wanted = available_methods() if methods is None else {*methods, Method.LIT}
    allowed = available_methods() & wanted
    moves = detect_moves(old, new)
    plan = plan_with_moves(old, new, moves)
    with _Files(old_dir, new_dir, old) as files:
        try:
            parts = _parts(plan, files)
            costs = {p.path: _estimate(p, files, allowed) for p in parts}
            if give_up_above is not None:
                rough = sum(_rough_size(p, files, costs[p.path]) for p in parts)
                if rough > give_up_above:
                    raise DeltaNotWorthItError(
                        f"a patch would be about {rough} bytes, not smaller than the "
                        f"{give_up_above}-byte archive")
            encoded = [_Encoding(layout, [files.encode(seg) for seg in layout])
                       for layout in candidate_layouts(parts, costs, allowed)]
        except OSError as e:
            raise DeltaError(f"cannot read {e.filename}: {e.strerror}") from e
        best = min(encoded, key=lambda enc: enc.size)
        specs = [p.spec for p in best.payloads]
        header = header_for(old, new, plan, moves, best.layout, specs)
        body = json.dumps(header.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        frame = zstd_frame(body, _header_dictionary(old))
        out.write(MAGIC + source_tag(old) + _uleb128(len(frame)) + frame)
        for payload in best.payloads:
            payload.write_to(out)
        return frozenset(spec.method.value for spec in specs)


@dataclass(frozen=True, slots=True)
class _Payload:
    spec: SegmentSpec
    data: bytes | None = None
    spooled: BinaryIO | None = None

    def write_to(self, out: BinaryIO) -> None:
        if self.data is not None:
            out.write(self.data)
            return
        assert self.spooled is not None
        self.spooled.seek(0)
        while chunk := self.spooled.read(_CHUNK):
            out.write(chunk)


@dataclass(frozen=True, slots=True)
class _Encoding:
    layout: Layout
    payloads: list[_Payload]

    @property
    def size(self) -> int:
        return sum(p.spec.length for p in self.payloads)


def _parts(plan: Sequence[PlanItem], files: _Files) -> list[Part]:
    parts = []
    for item in plan:
        entry = item.entry
        if entry.type is EntryType.FILE and item.copy_from is None:
            base_size = files.old_files[item.base].size if item.base else 0
            parts.append(Part(entry.path, entry.size, item.base, base_size))
    return parts


def _estimate(part: Part, files: _Files, allowed: Collection[Method]) -> dict[Method, int]:
    """Sizes of ``part`` under each method, with quick settings, to choose between them.

    Every diff method is measured on binaries: a rebuilt binary (relinked addresses every
    few bytes) looks unrelated to its old self to zstd, yet diffs to a fraction of its
    size. Only text, where zstd's matches are what any differ would find, is judged
    unrelated by a quick zstd look first.
    """
    text = files.looks_like_text(part.path)
    if part.base is None or segment_memory(Method.HDIFF, [part]) > SEGMENT_MAX:
        return _alone(part, text, allowed)
    ref, target = files.old(part.base), files.new(part.path)
    # A first look at level 1 (fast): if the old text does not make the new one
    # noticeably cheaper, they are unrelated (a base guessed from the name alone) and
    # the costly diff estimates would be spent for nothing.
    if text and len(zstd_frame(target, ref, 1)) > len(zstd_frame(target, level=1)) * _UNRELATED:
        return _alone(part, text, allowed)
    costs = {Method.LIT: len(zstd_frame(target, level=_ESTIMATE_LEVEL))}
    if Method.ZDICT in allowed:
        costs[Method.ZDICT] = len(zstd_frame(target, ref, _ESTIMATE_LEVEL))
    if Method.HDIFF in allowed:
        diff = files.hdiff((part.base,), (part.path,), ref, target)
        costs[Method.HDIFF] = len(zstd_frame(diff, level=_ESTIMATE_LEVEL))
    bsdiff_max = _BSDIFF_BESIDE_HDIFF if Method.HDIFF in allowed else _BSDIFF_ALONE
    if Method.BSDIFF in allowed and max(part.size, part.base_size) <= bsdiff_max:
        blob, _ = bsdiff_encode(ref, target)
        costs[Method.BSDIFF] = len(zstd_frame(blob, level=_ESTIMATE_LEVEL))
    return costs


def _alone(part: Part, text: bool, allowed: Collection[Method]) -> dict[Method, int]:
    """A file with nothing to diff against (cost unmeasured): new text shares words
    with its neighbours (zstd with the old tree as dictionary), a new binary seldom."""
    small_text = part.size <= SEGMENT_MAX and text
    return {Method.ZDICT if small_text and Method.ZDICT in allowed else Method.LIT: 0}


def _rough_size(part: Part, files: _Files, costs: dict[Method, int]) -> int:
    """An upper-side guess of ``part``'s cost: its best estimate, or zstd level 1 alone."""
    known = [c for c in costs.values() if c > 0]
    if known:
        return min(known)
    return len(zstd_frame(files.new(part.path), level=1))


class DeltaNotWorthItError(DeltaError):
    """The patch would not be smaller than the full archive; none is made."""


class _Files:
    """Reads the two trees for the publisher, and encodes each segment once."""

    def __init__(self, old_dir: Path, new_dir: Path, old: TreeManifest) -> None:
        self.old_dir = old_dir
        self.new_dir = new_dir
        self.old_tree = old
        self.old_files = {e.path: e for e in old.entries if e.type is EntryType.FILE}
        self._done: dict[Segment, _Payload] = {}
        self._hdiffs: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *_: object) -> None:
        for payload in self._done.values():
            if payload.spooled is not None:
                payload.spooled.close()

    def old(self, path: str) -> bytes:
        return (self.old_dir / path).read_bytes()

    def new(self, path: str) -> bytes:
        return (self.new_dir / path).read_bytes()

    def looks_like_text(self, path: str) -> bool:
        with (self.new_dir / path).open("rb") as f:
            return b"\0" not in f.read(8192)

    def hdiff(self, bases: tuple[str, ...], paths: tuple[str, ...], ref: bytes,
              target: bytes) -> bytes:
        """The HDiffPatch diff of these new files against these old ones, made once
        (the estimate's diff is the single-file segment's), and checked by applying it
        as a device will."""
        key = bases, paths
        if key not in self._hdiffs:
            raw = hdiff_encode(ref, target, validate=False)
            if hdiff_apply(ref, raw, len(target)) != target:  # pragma: no cover - a bug
                raise DeltaError(f"HDiffPatch made a diff that does not apply: {paths[0]}")
            self._hdiffs[key] = raw
        return self._hdiffs[key]

    def encode(self, segment: Segment) -> _Payload:
        if segment not in self._done:
            self._done[segment] = self._encode(segment)
        return self._done[segment]

    def _encode(self, segment: Segment) -> _Payload:
        method, size = segment.method, segment.target_size
        if method is Method.LIT:
            return self._literal(segment)
        target = b"".join(self.new(p.path) for p in segment.parts)
        if method is Method.ZDICT:
            context = zdict_context(self.old_tree, segment.bases, CONTEXT_MAX)
            ref = b"".join(self.old(p) for p in (*context, *segment.bases))
            data = zdict_encode(ref, target)
            return _Payload(SegmentSpec(method, len(data), context=CONTEXT_MAX), data)
        ref = b"".join(self.old(p) for p in segment.bases)
        control = 0
        if method is Method.HDIFF:
            raw = self.hdiff(segment.bases, tuple(p.path for p in segment.parts), ref, target)
        else:
            raw, control = bsdiff_encode(ref, target)
        if len(raw) > raw_limit(size):  # a device would refuse it; it would not pay anyway
            return self._literal(Segment(Method.LIT, segment.parts))
        codec, data, window = compress(raw)
        return _Payload(SegmentSpec(method, len(data), codec, window, control=control), data)

    def _literal(self, segment: Segment) -> _Payload:
        size = segment.target_size
        if size <= SEGMENT_MAX:
            codec, data, window = compress(b"".join(self.new(p.path) for p in segment.parts))
            return _Payload(SegmentSpec(Method.LIT, len(data), codec, window), data)
        spooled = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the payload
        chunks = (c for p in segment.parts for c in _file_chunks(self.new_dir / p.path))
        zstd_stream(chunks, size, spooled)
        length = spooled.tell()
        return _Payload(SegmentSpec(Method.LIT, length, Codec.ZSTD), spooled=spooled)


# -- applying -------------------------------------------------------------------------------


def apply_delta(patch: BinaryIO, old_dir: Path, old: TreeManifest, dest: Path, *,
                max_size: int, max_entries: int, max_depth: int = MAX_DEPTH,
                on_progress: Callable[[int], None] | None = None) -> TreeManifest:
    """Rebuild the new tree into the new directory ``dest`` from ``old_dir`` and a patch.

    ``old`` is the verified manifest of ``old_dir``. Returns the manifest of what was
    written; the caller compares its digest with the signed one. On error the caller
    removes ``dest``.

    Raises:
        DeltaError: the patch is malformed, was made from another tree, or needs a
            method this installation lacks (HDiffPatch).
        IntegrityError: an installed file does not match the installed manifest.
        UnsafeArchiveError: an entry is refused, or the tree exceeds the signed size or
            entry count (see ``TreeWriter``).
        StorageError: the disk refused.
    """
    if patch.read(len(MAGIC)) != MAGIC:
        raise DeltaError("not a fleetup-delta/2 patch")
    tag = source_tag(old)
    if patch.read(len(tag)) != tag:
        raise DeltaError("patch was made from a different tree than the installed one")
    try:
        recipe = compose(old, _read_header(patch, old))
        if recipe.size > max_size:
            raise UnsafeArchiveError(f"patch makes a tree of {recipe.size} bytes, more than "
                                     f"the signed size of {max_size}")
        if recipe.count > max_entries:
            raise UnsafeArchiveError(f"patch makes a tree of {recipe.count} entries, more "
                                     f"than the signed {max_entries}")
        writer = TreeWriter(dest, max_size=max_size, max_entries=max_entries,
                            max_depth=max_depth, on_progress=on_progress)
        _write_tree(recipe, patch, writer, _Installed(old_dir, old))
        return writer.finish()
    except (zstandard.ZstdError, lzma.LZMAError) as e:
        raise DeltaError(f"corrupt patch: {e}") from e


def _write_tree(recipe: Recipe, patch: BinaryIO, writer: TreeWriter,
                installed: _Installed) -> None:
    """Directories first, so every file has its parent; symlinks last (see TreeWriter)."""
    for entry in recipe.dirs:
        writer.add_dir(entry.path, entry.mode)
    for segment in recipe.segments:
        _apply_segment(segment, patch, writer, installed)
    for entry, source in recipe.copies:
        installed.copy(source, entry, writer)
    if patch.read(1):
        raise DeltaError("patch has data after its last segment")
    for entry in recipe.links:
        writer.add_link(entry.path, entry.target)


# Words every header uses, so that even the first of each costs a few bytes.
_PRIMER = (b'{"drop":[],"format":"%s","moves":[],"put":[{"mode":420,"path":"","seg":1,'
           b'"size":0,"type":"file"},{"mode":493,"path":"","type":"dir"},{"base":"",'
           b'"from":"","mode":493,"path":"","size":0,"type":"file"},{"path":"","target":"",'
           b'"type":"link"}],"segments":[{"codec":"xz","len":0,"method":"hdiff","window":2'
           b'},{"codec":"zstd","len":0,"method":"lit"},{"codec":"zstd","control":0,"len":0,'
           b'"method":"bsdiff"},{"context":%d,"len":0,"method":"zdict"}]}'
           % (DELTA_FORMAT.encode(), CONTEXT_MAX))


def source_tag(old: TreeManifest) -> bytes:
    """What a patch carries to say which tree it applies to: 8 bytes of its digest."""
    return bytes.fromhex(old.digest().removeprefix("sha256:")[:16])


def _header_dictionary(old: TreeManifest) -> bytes:
    """What the header frame is compressed against: the old tree's manifest and the
    words every header uses."""
    return old.to_json() + _PRIMER


def _uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_uleb128(patch: BinaryIO) -> int:
    """A length of at most 4 bytes of 7 bits: more is not a header length."""
    value = 0
    for shift in range(0, 28, 7):
        (byte,) = Section(patch, 1).read_all()
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise DeltaError("patch header is implausibly large")


def _read_header(patch: BinaryIO, old: TreeManifest) -> object:
    length = _read_uleb128(patch)
    if length > _HEADER_MAX:
        raise DeltaError("patch header is implausibly large")
    section = Section(patch, length)
    try:
        body = zstd_unframe(section, _header_dictionary(old), _HEADER_MAX, "patch header")
    except zstandard.ZstdError as e:
        raise DeltaError(f"corrupt patch header: {e}") from e
    section.skip_rest()
    try:
        return json.loads(body)
    except ValueError as e:
        raise DeltaError(f"malformed patch header: {e}") from e


def _apply_segment(segment: PlannedSegment, patch: BinaryIO, writer: TreeWriter,
                   installed: _Installed) -> None:
    spec, size = segment.spec, sum(e.size for e in segment.files)
    section = Section(patch, spec.length)
    if spec.method is Method.LIT:
        assert spec.codec is not None
        chunks = decompress_chunks(spec.codec, spec.window, section, size)
    else:
        ref = installed.read(segment.ref)
        chunks = (zdict_chunks(ref, section, size) if spec.method is Method.ZDICT
                  else iter((_undiff(spec, ref, section, size),)))
    _write_files(writer, segment.files, chunks)
    section.skip_rest()


def _undiff(spec: SegmentSpec, ref: bytes, section: Section, size: int) -> bytes:
    assert spec.codec is not None
    raw = decompress_all(spec.codec, spec.window, section, raw_limit(size))
    if spec.method is Method.HDIFF:
        return hdiff_apply(ref, raw, size)
    return bsdiff_apply(ref, raw, spec.control, size)


def _write_files(writer: TreeWriter, files: Sequence[Entry], chunks: Iterator[bytes]) -> None:
    """Cut one stream of ``chunks`` into the ``files``, in order, and write them."""
    stream = _Cutter(chunks)
    for entry in files:
        writer.add_file(entry.path, entry.mode, entry.size, stream.take(entry.size))
    for _ in chunks:  # runs the decoder's own end-of-stream check
        raise DeltaError("payload holds more data than the patch declares")


class _Cutter:
    """Hands out consecutive byte ranges of a chunk stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def take(self, n: int) -> Iterator[bytes]:
        while n:
            if not self._left:
                self._left = memoryview(next(self._chunks, b""))
                if not self._left:
                    raise DeltaError("payload holds less data than the patch declares")
            # At most a chunk at a time: a piece is copied once more on its way out.
            piece, self._left = self._left[:min(n, _CHUNK)], self._left[min(n, _CHUNK):]
            n -= len(piece)
            yield bytes(piece)


class _Installed:
    """The installed old tree, read only as its verified manifest allows."""

    def __init__(self, root: Path, manifest: TreeManifest) -> None:
        self.root = str(root)
        self.files = {e.path: e for e in manifest.entries if e.type is EntryType.FILE}

    def read(self, paths: Iterable[str]) -> bytes:
        """The files concatenated, each checked against its SHA-256."""
        parts = []
        for path in paths:
            digest = hashlib.sha256()
            for chunk in self._chunks(path):
                digest.update(chunk)
                parts.append(chunk)
            self._check(path, digest.hexdigest())
        return b"".join(parts)

    def copy(self, source: str, entry: Entry, writer: TreeWriter) -> None:
        written = writer.add_file(entry.path, entry.mode, entry.size, self._chunks(source))
        self._check(source, written.sha256)

    def _check(self, path: str, sha256: str) -> None:
        if sha256 != self.files[path].sha256:
            raise IntegrityError(f"{path}: installed file does not match its manifest")

    def _chunks(self, path: str) -> Iterator[bytes]:
        """The manifest's size of bytes of an installed file (a longer file is cut short,
        and then fails its hash check if that changed it)."""
        full = os.path.join(self.root, path)  # not pathlib: this runs for every file
        left = self.files[path].size
        try:
            with open(full, "rb", buffering=0) as f:
                while left:
                    chunk = f.read(min(left, _CHUNK))
                    if not chunk:
                        raise IntegrityError(f"{path}: installed file is shorter than its "
                                             "manifest says")
                    left -= len(chunk)
                    yield chunk
        except FileNotFoundError:
            raise IntegrityError(f"{path}: installed file is missing") from None
        except OSError as e:
            raise StorageError(f"cannot read {full}: {e.strerror}") from e


def _file_chunks(path: str | Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
