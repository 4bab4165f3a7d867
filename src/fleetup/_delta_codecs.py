"""Byte-level encoders and bounded decoders for the segments of a fleetup delta.

Publisher side: zstd with old files as dictionary, HDiffPatch, bsdiff4, and the two
payload compressors (zstd, raw LZMA2 "xz"). Device side: the inverse of each, treating
the patch as hostile: a section never reads past its declared length, every declared
size is checked before memory is allocated for it, zstd windows are capped, and each
decoder must produce exactly the bytes the header declared.

HDiffPatch (the ``hdiffpatch`` package) is a dependency, but its wheels do not cover
every platform: without it a device still applies every patch that does not use it,
and a publisher does not make such patches.
"""

from __future__ import annotations

import lzma
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import BinaryIO, cast

import bsdiff4.core
import zstandard

from fleetup._delta_plan import Codec, Method
from fleetup.errors import DeltaError


def _load_hdiffpatch() -> ModuleType | None:
    try:
        import hdiffpatch
    except ImportError:  # pragma: no cover - depends on the installation
        return None
    return hdiffpatch


# Tests set this to None to play a device without HDiffPatch.
hdiffpatch = _load_hdiffpatch()

__all__ = [
    "MAX_WINDOW_LOG",
    "Section",
    "available_methods",
    "bsdiff_apply",
    "bsdiff_encode",
    "compress",
    "decompress_all",
    "decompress_chunks",
    "hdiff_apply",
    "hdiff_encode",
    "raw_limit",
    "zdict_chunks",
    "zdict_encode",
    "zstd_frame",
    "zstd_stream",
    "zstd_unframe",
]

# Largest zstd window a device accepts (128 MiB, like release archives).
MAX_WINDOW_LOG = 27
_CHUNK = 1 << 20
_ZSTD_LEVEL = 19
# Payloads above this are compressed with zstd only: xz -9e is slow on big inputs.
_XZ_MAX = 32 << 20
_XZ_MIN_WINDOW = 12
_HDIFF_MAGIC = b"HDIFF13&\x00"   # HDiffPatch's diff format with no inner compression
_MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS

_ReadFn = Callable[[int], bytes]


def raw_limit(size: int) -> int:
    """Most bytes an uncompressed hdiff or bsdiff payload for ``size`` bytes may take
    (a diff larger than that would not beat the literal bytes anyway)."""
    return size + size // 8 + (1 << 20)


def available_methods() -> frozenset[Method]:
    """The methods this installation can both make and apply."""
    methods = {Method.LIT, Method.ZDICT, Method.BSDIFF}
    if hdiffpatch is not None:
        methods.add(Method.HDIFF)
    return frozenset(methods)


# -- reading the patch ----------------------------------------------------------------


class Section:
    """The next ``length`` bytes of a patch stream, read in order.

    Reading never goes past ``length``; a patch that ends before it is a
    :class:`DeltaError`.
    """

    def __init__(self, source: BinaryIO, length: int) -> None:
        self._source = source
        self.left = length

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        if want == 0:
            return b""
        data = self._source.read(want)
        if not data:
            raise DeltaError("patch ends early")
        self.left -= len(data)
        return data

    def read_all(self) -> bytes:
        parts = []
        while self.left:
            parts.append(self.read(min(self.left, _CHUNK)))
        return b"".join(parts)

    def skip_rest(self) -> None:
        while self.left:
            self.read(min(self.left, _CHUNK))


# -- zstd frames and payload compression ----------------------------------------------------


def _window_log(size: int) -> int:
    return max(10, min(MAX_WINDOW_LOG, math.ceil(math.log2(size + 1))))


def _zstd_params(size: int, ref_size: int = 0,
                 level: int = _ZSTD_LEVEL) -> zstandard.ZstdCompressionParameters:
    # Sized tables: a compressor set up for unknown sizes spends more time clearing its
    # tables than compressing a small file.
    return zstandard.ZstdCompressionParameters.from_level(
        level, source_size=size, dict_size=ref_size, window_log=_window_log(ref_size + size),
        format=_MAGICLESS, write_content_size=False, write_checksum=False,
        write_dict_id=False)


def _raw_dict(ref: bytes) -> zstandard.ZstdCompressionDict | None:
    if not ref:
        return None
    return zstandard.ZstdCompressionDict(ref, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def zstd_frame(data: bytes, ref: bytes = b"", level: int = _ZSTD_LEVEL) -> bytes:
    """One magicless zstd frame of ``data``, with ``ref`` as raw-content dictionary."""
    params = _zstd_params(len(data), len(ref), level)
    return zstandard.ZstdCompressor(dict_data=_raw_dict(ref),
                                    compression_params=params).compress(data)


def zstd_stream(chunks: Iterable[bytes], size: int, out: BinaryIO) -> None:
    """Write ``size`` bytes of ``chunks`` to ``out`` as one magicless zstd frame."""
    compressor = zstandard.ZstdCompressor(compression_params=_zstd_params(size))
    with compressor.stream_writer(out, closefd=False) as writer:
        for chunk in chunks:
            writer.write(chunk)


def _zstd_reader(source: Section, ref: bytes = b"") -> zstandard.ZstdDecompressionReader:
    decompressor = zstandard.ZstdDecompressor(
        dict_data=_raw_dict(ref), max_window_size=1 << MAX_WINDOW_LOG, format=_MAGICLESS)
    return decompressor.stream_reader(cast(BinaryIO, source), read_size=_CHUNK,
                                      read_across_frames=False, closefd=False)


def zstd_unframe(source: Section, ref: bytes, limit: int, what: str = "payload") -> bytes:
    """Decode one frame made by :func:`zstd_frame`, refusing more than ``limit`` bytes."""
    return b"".join(_until_end(_zstd_reader(source, ref).read, limit, what))


def compress(data: bytes) -> tuple[Codec, bytes, int]:
    """The smaller of zstd and xz for ``data``: ``(codec, payload, xz window log)``."""
    best: tuple[Codec, bytes, int] = (Codec.ZSTD, zstd_frame(data), 0)
    if len(data) <= _XZ_MAX:
        window = max(_XZ_MIN_WINDOW, _window_log(len(data)))
        xz = _best_xz(data, window)
        if len(xz) < len(best[1]):
            best = (Codec.XZ, xz, window)
    return best


# LZMA's literal-context and position bits (lc, pb). The default suits text; binary
# diffs, whose bytes have no alignment, come out up to 1 % smaller with pb = 0. LZMA2
# carries them in its stream, so the decoder needs only the dictionary size.
_LITERAL_BITS = ((3, 2), (3, 0), (4, 0))
_SAMPLE = 2 << 20


def _best_xz(data: bytes, window: int) -> bytes:
    """``data`` as xz with the (lc, pb) that suits it: a small payload is its own sample,
    so the smallest of the trials is the result (xz -9e is the slow part of a delta)."""
    if len(data) <= _SAMPLE:
        return min((_xz(data, window, bits) for bits in _LITERAL_BITS), key=len)
    return _xz(data, window, _literal_bits(data))


def _literal_bits(data: bytes) -> tuple[int, int]:
    """The (lc, pb) that compresses ``data`` best, judged on a sample when it is large."""
    sample = data[:_SAMPLE]
    window = max(_XZ_MIN_WINDOW, _window_log(len(sample)))
    return min(_LITERAL_BITS, key=lambda bits: len(_xz(sample, window, bits)))


def _xz(data: bytes, window: int, bits: tuple[int, int]) -> bytes:
    lc, pb = bits
    options = {"id": lzma.FILTER_LZMA2, "dict_size": 1 << window,
               "preset": 9 | lzma.PRESET_EXTREME, "lc": lc, "pb": pb}
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[options])


def _xz_filters(window: int) -> list[dict[str, int]]:
    return [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << window}]


def decompress_chunks(codec: Codec, window: int, source: Section,
                      size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes decoded from ``source``, in chunks; then the stream must end."""
    read = _zstd_reader(source).read if codec is Codec.ZSTD else _xz_reader(source, window)
    return _exactly(read, size)


def decompress_all(codec: Codec, window: int, source: Section, limit: int) -> bytes:
    """The whole payload decoded from ``source``, refusing more than ``limit`` bytes."""
    read = _zstd_reader(source).read if codec is Codec.ZSTD else _xz_reader(source, window)
    return b"".join(_until_end(read, limit))


def _xz_reader(source: Section, window: int) -> _ReadFn:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_xz_filters(window))

    def read(n: int) -> bytes:
        while not decompressor.eof:
            data = b"" if not decompressor.needs_input else source.read(_CHUNK)
            if decompressor.needs_input and not data:
                raise DeltaError("compressed payload ends early")
            out = decompressor.decompress(data, max_length=n)
            if out:
                return out
        return b""

    return read


def _exactly(read: _ReadFn, size: int) -> Iterator[bytes]:
    left = size
    while left:
        chunk = read(min(left, _CHUNK))
        if not chunk:
            raise DeltaError("payload holds less data than the patch declares")
        left -= len(chunk)
        yield chunk
    if read(1):
        raise DeltaError("payload holds more data than the patch declares")


def _until_end(read: _ReadFn, limit: int, what: str = "payload") -> Iterator[bytes]:
    total = 0
    while chunk := read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise DeltaError(f"{what} expands past the {limit} bytes it may take")
        yield chunk


# -- methods -------------------------------------------------------------------------------


def zdict_encode(ref: bytes, target: bytes) -> bytes:
    """``target`` as one zstd frame with ``ref`` as dictionary (``zstd --patch-from``)."""
    return zstd_frame(target, ref)


def zdict_chunks(ref: bytes, source: Section, size: int) -> Iterator[bytes]:
    """Decode a :func:`zdict_encode` frame: exactly ``size`` bytes, in chunks."""
    return _exactly(_zstd_reader(source, ref).read, size)


def hdiff_encode(ref: bytes, target: bytes, *, validate: bool = True) -> bytes:
    """An HDiffPatch diff with no inner compression (the payload codec compresses it).

    ``big_cache_match`` (a bloom filter of about a byte per ``ref`` byte) makes the same
    diff two to three times faster on large binaries.
    """
    if hdiffpatch is None:  # pragma: no cover - the chooser does not ask then
        raise DeltaError("HDiffPatch is not installed (pip install hdiffpatch)")
    try:
        return bytes(hdiffpatch.diff(ref, target, "none", validate=validate,
                                     big_cache_match=True))
    except hdiffpatch.HDiffPatchError as e:  # pragma: no cover - a bug in HDiffPatch
        raise DeltaError(f"HDiffPatch could not diff {len(target)} bytes: {e}") from e


def hdiff_apply(ref: bytes, diff: bytes, size: int) -> bytes:
    """Apply an :func:`hdiff_encode` diff, after checking the sizes its header declares."""
    if hdiffpatch is None:
        raise DeltaError("this patch needs HDiffPatch, which is not installed here "
                         "(pip install hdiffpatch)")
    if not diff.startswith(_HDIFF_MAGIC):
        raise DeltaError("HDiffPatch payload has a wrong header")
    new_size, offset = _hpatch_uint(diff, len(_HDIFF_MAGIC))
    old_size, _ = _hpatch_uint(diff, offset)
    if new_size != size or old_size != len(ref):
        raise DeltaError(f"HDiffPatch payload is for {old_size} -> {new_size} bytes, "
                         f"not {len(ref)} -> {size}")
    try:
        result = bytes(hdiffpatch.apply(ref, diff))
    except (hdiffpatch.HDiffPatchError, ValueError) as e:
        raise DeltaError(f"HDiffPatch payload does not apply: {e}") from e
    if len(result) != size:
        raise DeltaError("HDiffPatch payload made a file of the wrong size")
    return result


def _hpatch_uint(data: bytes, offset: int) -> tuple[int, int]:
    """HDiffPatch's variable-length unsigned integer: 7 bits a byte, high bit = more."""
    value = 0
    for i in range(offset, min(offset + 9, len(data))):
        value = (value << 7) | (data[i] & 0x7F)
        if not data[i] & 0x80:
            return value, i + 1
    raise DeltaError("HDiffPatch payload has a malformed size")


def bsdiff_encode(ref: bytes, target: bytes) -> tuple[bytes, int]:
    """A bsdiff4 diff as one uncompressed blob, and the length of its control block."""
    control, diff, extra = bsdiff4.core.diff(ref, target)
    return bytes(control) + bytes(diff) + bytes(extra), len(control)


def bsdiff_apply(ref: bytes, blob: bytes, control_len: int, size: int) -> bytes:
    """Apply a :func:`bsdiff_encode` blob after checking every control triple."""
    if control_len % 24 or control_len > len(blob):
        raise DeltaError("bsdiff payload has a malformed control block")
    diff_len = extra_len = 0
    for raw in struct.iter_unpack("<QQQ", blob[:control_len]):
        x, y, _ = (_offtin(v) for v in raw)
        if x < 0 or y < 0:
            raise DeltaError("bsdiff payload has a negative length")
        diff_len += x
        extra_len += y
    if diff_len + extra_len != size or control_len + size != len(blob):
        raise DeltaError("bsdiff payload does not add up to the declared size")
    diff_end = control_len + diff_len
    try:
        result = bsdiff4.core.patch(ref, size, blob[:control_len], blob[control_len:diff_end],
                                    blob[diff_end:])
    except (ValueError, MemoryError) as e:
        raise DeltaError(f"bsdiff payload does not apply: {e}") from e
    return bytes(result)


def _offtin(value: int) -> int:
    """bsdiff's sign-and-magnitude 64-bit integer."""
    magnitude = value & ((1 << 63) - 1)
    return -magnitude if value >> 63 else magnitude
