"""Hostile delta patches: each is refused with the right error and a one-line message.

A patch is hostile input on the device until the rebuilt tree's digest matches the
signed one. These patches are crafted by hand (a real header dictionary, real zstd
frames, lying fields) against a small installed tree, and the tests check both the
exception class and its message, and that nothing was written outside ``dest``.
"""

from __future__ import annotations

import io
import json
import lzma
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetup._delta import (
    MAGIC,
    _header_dictionary,
    _uleb128,
    apply_delta,
    make_delta,
    source_tag,
)
from fleetup._delta_codecs import (
    bsdiff_apply,
    bsdiff_encode,
    hdiff_apply,
    hdiff_encode,
    zstd_frame,
)
from fleetup._delta_plan import SEGMENT_MAX
from fleetup._manifest import TreeManifest, scan_tree
from fleetup.errors import DeltaError, FleetupError, IntegrityError, UnsafeArchiveError
from tests.support.trees import Dir, File, TreeSpec, make_tree

OLD: TreeSpec = {"bin/app": File("#!/bin/sh\necho 1\n", 0o755), "lib/data.txt": "data " * 200,
       "lib/blob": bytes(range(256)) * 40, "etc": Dir()}


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, TreeManifest]:
    root = make_tree(tmp_path / "installed", OLD)
    return root, scan_tree(root)


def craft(old: TreeManifest, header: dict[str, object], *payloads: bytes) -> bytes:
    """A patch with exactly this header (JSON) and these payload bytes."""
    body = {"format": "fleetup-delta/2", "moves": [], "drop": [], "put": [], "segments": [],
            **header}
    return start(old, zstd_frame(json.dumps(body).encode(), _header_dictionary(old)),
                 *payloads)


def start(old: TreeManifest, header_frame: bytes, *payloads: bytes) -> bytes:
    return MAGIC + source_tag(old) + _uleb128(len(header_frame)) + header_frame + b"".join(
        payloads)


def lit(size: int, payload: bytes, path: str = "new.txt", **spec: object) -> dict[str, object]:
    """A header putting one new file of ``size`` bytes, from one ``lit`` zstd segment."""
    return {"put": [{"path": path, "type": "file", "mode": 0o644, "size": size, "seg": 0}],
            "segments": [{"method": "lit", "codec": "zstd", "len": len(payload), **spec}]}


def frame(data: bytes, **params: int) -> bytes:
    """A magicless zstd frame; ``params`` override compression parameters."""
    options = zstandard.ZstdCompressionParameters.from_level(
        3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=0, **params)
    return zstandard.ZstdCompressor(compression_params=options).compress(data)


def xz(data: bytes, window: int = 20) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW,
                         filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << window}])


def apply(patch: bytes, installed: tuple[Path, TreeManifest], *, max_size: int = 1 << 20,
          max_entries: int = 100) -> TreeManifest:
    root, old = installed
    return apply_delta(io.BytesIO(patch), root, old, root.parent / "dest",
                       max_size=max_size, max_entries=max_entries)


def valid_patch(installed: tuple[Path, TreeManifest], tmp_path: Path) -> bytes:
    root, old = installed
    new_dir = make_tree(tmp_path / "new", {**OLD, "lib/data.txt": "data " * 190 + "more",
                                           "lib/new.txt": "fresh"})
    out = io.BytesIO()
    make_delta(root, old, new_dir, scan_tree(new_dir), out)
    return out.getvalue()


Case = Callable[[TreeManifest], bytes]

PUT_FILE = {"type": "file", "mode": 0o644}

CASES: dict[str, tuple[Case, type[FleetupError], str]] = {
    # Not a patch at all, or lying about its framing.
    "bad-magic": (lambda old: b"NOTAPATCH" + b"\0" * 20, DeltaError,
                  "not a fleetup-delta/2 patch"),
    "format-1": (lambda old: b"FLDELTA1" + b"\0" * 20, DeltaError, "not a fleetup-delta/2"),
    "other-source": (lambda old: MAGIC + b"\0" * 20, DeltaError,
                     "patch was made from a different tree than the installed one"),
    "header-length-huge": (lambda old: MAGIC + source_tag(old) + _uleb128(1 << 31),
                           DeltaError, "patch header is implausibly large"),
    "header-length-endless": (lambda old: MAGIC + source_tag(old) + b"\xff" * 100,
                              DeltaError, "patch header is implausibly large"),
    "header-not-zstd": (lambda old: start(old, b"hello"), DeltaError, "corrupt patch header"),
    "header-not-json": (lambda old: start(old, zstd_frame(b"{not json",
                                                          _header_dictionary(old))),
                        DeltaError, "malformed patch header"),
    "header-bomb": (lambda old: start(old, zstd_frame(b" " * (65 << 20),
                                                      _header_dictionary(old), level=1)),
                    DeltaError, "patch header expands past the 67108864 bytes it may take"),
    "other-format": (lambda old: craft(old, {"format": "fleetup-delta/1"}), DeltaError,
                     "unknown delta format"),
    "unknown-field": (lambda old: craft(old, {"exec": "rm -rf /"}), DeltaError,
                      "unknown field 'exec'"),
    "put-not-a-list": (lambda old: craft(old, {"put": {"a": 1}}), DeltaError,
                       "'put' is not a list"),
    # Names outside the installed tree.
    "from-dotdot": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE, "size": 1,
                                                     "from": "../etc/passwd"}]}),
                    DeltaError, "refers to '../etc/passwd', which is not a file of the "
                                "installed tree"),
    "from-absolute": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE, "size": 1,
                                                       "from": "/etc/shadow"}]}),
                      DeltaError, "refers to '/etc/shadow', which is not a file"),
    "from-a-directory": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE,
                                                          "size": 0, "from": "lib"}]}),
                         DeltaError, "refers to 'lib', which is not a file"),
    "from-wrong-size": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE, "size": 3,
                                                         "from": "bin/app"}]}),
                        DeltaError, "x: copied from bin/app, which has another size"),
    "base-outside": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 1, "seg": 0, "base": "../../root/.ssh/id"}],
        "segments": [{"method": "zdict", "len": 0}]}),
        DeltaError, "refers to '../../root/.ssh/id'"),
    "move-a-file": (lambda old: craft(old, {"moves": [["bin/app", "sbin/app"]]}), DeltaError,
                    "moves 'bin/app', which is not a directory of the installed tree"),
    "move-missing": (lambda old: craft(old, {"moves": [["nope", "yes"]]}), DeltaError,
                     "moves 'nope', which is not a directory"),
    "move-onto-existing": (lambda old: craft(old, {"moves": [["lib", "bin"]]}), DeltaError,
                           "moves two entries of the installed tree to bin"),
    "drop-missing": (lambda old: craft(old, {"drop": ["../../etc"]}), DeltaError,
                     "drops '../../etc', which is not in the installed tree"),
    # Paths that would escape the new tree.
    "put-dotdot": (lambda old: craft(old, {"put": [{"path": "../evil", "type": "dir",
                                                    "mode": 0o755}]}),
                   UnsafeArchiveError, "'../evil': '..' in path"),
    "put-absolute": (lambda old: craft(old, {"put": [{"path": "/etc/cron.d/x", "type": "dir",
                                                      "mode": 0o755}]}),
                     UnsafeArchiveError, "absolute path"),
    "move-dotdot": (lambda old: craft(old, {"moves": [["lib", "../lib"]]}),
                    UnsafeArchiveError, "'../lib': '..' in path"),
    "escaping-link": (lambda old: craft(old, {"put": [{"path": "evil", "type": "link",
                                                       "target": "../../etc"}]}),
                      UnsafeArchiveError, "evil: symlink to '../../etc' leads outside"),
    "file-under-link": (lambda old: craft(old, {"drop": ["etc"], "put": [
        {"path": "etc", "type": "link", "target": "lib"},
        {"path": "etc/x", **PUT_FILE, "size": 17, "from": "bin/app"}]}),
        UnsafeArchiveError, "etc/x: its parent directory is not in the tree"),
    "duplicate-put": (lambda old: craft(old, {"put": [{"path": "d", "type": "dir", "mode": 493},
                                                      {"path": "d", "type": "dir", "mode": 448}]}),
                      UnsafeArchiveError, "d: duplicate entry"),
    # Sizes, lengths and segments that lie.
    "negative-size": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE, "size": -1,
                                                       "seg": 0}]}),
                      DeltaError, "'size' is not a valid count: -1"),
    "bool-size": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE, "size": True,
                                                   "seg": 0}]}),
                  DeltaError, "'size' is not a valid count: True"),
    "missing-segment": (lambda old: craft(old, {"put": [{"path": "x", **PUT_FILE, "size": 1,
                                                         "seg": 3}]}),
                        DeltaError, "x: refers to segment 3, which the patch lacks"),
    "empty-segment": (lambda old: craft(old, {"segments": [{"method": "zdict", "len": 0}]}),
                      DeltaError, "segment 0 of the patch makes no file"),
    "unknown-method": (lambda old: craft(old, {**lit(1, b""), "segments": [
        {"method": "exec", "codec": "zstd", "len": 0}]}),
        DeltaError, "unknown method or codec"),
    "zdict-with-codec": (lambda old: craft(old, {**lit(1, b""), "segments": [
        {"method": "zdict", "codec": "zstd", "len": 0}]}),
        DeltaError, "method zdict has a wrong codec"),
    "xz-window-huge": (lambda old: craft(old, lit(1, b"", codec="xz", window=40)),
                       DeltaError, r"asks for an xz window of 2\^40 bytes"),
    "context-huge": (lambda old: craft(old, {**lit(1, b""), "segments": [
        {"method": "zdict", "len": 0, "context": 1 << 40}]}),
        DeltaError, "asks for 1099511627776 bytes of context"),
    "segment-too-big": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": SEGMENT_MAX, "seg": 0, "base": "lib/blob"}],
        "segments": [{"method": "hdiff", "codec": "zstd", "len": 0}]}),
        DeltaError, r"segment 0 needs 671\d+ bytes in memory, more than the 67108864 allowed"),
    "tree-too-big": (lambda old: craft(old, lit(2 << 20, b"")), UnsafeArchiveError,
                     r"patch makes a tree of \d+ bytes, more than the signed size of 1048576"),
    "payload-truncated": (lambda old: craft(old, lit(5, f := frame(b"12345")), f)[:-3],
                          DeltaError, "patch ends early"),
    "length-past-the-end": (lambda old: craft(old, lit(5, f := frame(b"12345") + b"!" * 50),
                                              f)[:-50], DeltaError, "patch ends early"),
    "payload-short": (lambda old: craft(old, lit(10, f := frame(b"12345")), f), DeltaError,
                      "payload holds less data than the patch declares"),
    "payload-long": (lambda old: craft(old, lit(3, f := frame(b"12345")), f), DeltaError,
                     "payload holds more data than the patch declares"),
    "lit-bomb": (lambda old: craft(old, lit(100, f := frame(b"\0" * (200 << 20))), f),
                 DeltaError, "payload holds more data than the patch declares"),
    "payload-garbage": (lambda old: craft(old, lit(5, b"\xff" * 16), b"\xff" * 16),
                        DeltaError, "corrupt patch"),
    # A magicless frame declaring a 2 GiB window (descriptor 0xA8), then one raw block.
    "zstd-window-too-large": (
        lambda old: craft(old, lit(5, f := b"\x00\xa8\x29\x00\x00" + b"12345"), f),
        DeltaError, "corrupt patch: .*Frame requires too much memory"),
    "xz-garbage": (lambda old: craft(old, lit(5, b"\xff" * 64, codec="xz", window=20),
                                     b"\xff" * 64), DeltaError, "corrupt patch"),
    "xz-cut": (lambda old: craft(old, lit(500, f := xz(bytes(range(250)) * 2)[:-8], codec="xz",
                                          window=20), f),
               DeltaError, "compressed payload ends early"),
    "trailing-data": (lambda old: craft(old, lit(5, f := frame(b"12345")), f, b"junk"),
                      DeltaError, "patch has data after its last segment"),
    "hdiff-size-lies": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 4, "seg": 0, "base": "bin/app"}],
        "segments": [{"method": "hdiff", "codec": "zstd", "len": len(f := frame(
            hdiff_encode(b"#!/bin/sh\necho 1\n", b"#!/bin/sh\necho 2\n")))}]}, f),
        DeltaError, r"HDiffPatch payload is for 17 -> 17 bytes, not 17 -> 4"),
    "hdiff-inner-compression": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 4, "seg": 0, "base": "bin/app"}],
        "segments": [{"method": "hdiff", "codec": "zstd", "len": len(f := frame(
            b"HDIFF13&zstd\0\x04\x12"))}]}, f),
        DeltaError, "HDiffPatch payload has a wrong header"),
    "hdiff-raw-bomb": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 4, "seg": 0, "base": "bin/app"}],
        "segments": [{"method": "hdiff", "codec": "xz", "window": 20,
                      "len": len(f := xz(b"\0" * (3 << 20)))}]}, f),
        DeltaError, "payload expands past the 1048580 bytes it may take"),
    "bsdiff-negative": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 4, "seg": 0, "base": "bin/app"}],
        "segments": [{"method": "bsdiff", "codec": "zstd", "control": 24, "len": len(f := frame(
            struct.pack("<QQQ", (1 << 63) | 5, 9, 0) + b"abcd"))}]}, f),
        DeltaError, "bsdiff payload has a negative length"),
    "bsdiff-control-ragged": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 4, "seg": 0, "base": "bin/app"}],
        "segments": [{"method": "bsdiff", "codec": "zstd", "control": 7,
                      "len": len(f := frame(b"1234567abcd"))}]}, f),
        DeltaError, "bsdiff payload has a malformed control block"),
    "bsdiff-sizes-lie": (lambda old: craft(old, {
        "put": [{"path": "x", **PUT_FILE, "size": 4, "seg": 0, "base": "bin/app"}],
        "segments": [{"method": "bsdiff", "codec": "zstd", "control": 24, "len": len(f := frame(
            struct.pack("<QQQ", 1 << 40, 0, 0) + b"abcd"))}]}, f),
        DeltaError, "bsdiff payload does not add up to the declared size"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_patch_is_refused(name: str, installed: tuple[Path, TreeManifest]) -> None:
    build, error, message = CASES[name]
    root, old = installed
    before = scan_tree(root)
    with pytest.raises(error, match=message) as caught:
        apply(build(old), installed)
    assert "\n" not in str(caught.value)
    assert scan_tree(root) == before                      # the installed tree is untouched
    assert sorted(p.name for p in root.parent.iterdir()) in (["installed"],
                                                             ["dest", "installed"])


def test_too_many_entries_is_refused(installed: tuple[Path, TreeManifest]) -> None:
    _, old = installed
    patch = craft(old, {"put": [{"path": f"d{i}", "type": "dir", "mode": 493}
                                for i in range(50)]})
    with pytest.raises(UnsafeArchiveError, match="tree of 56 entries, more than the signed 20"):
        apply(patch, installed, max_entries=20)


@pytest.mark.parametrize("cut", [0, 7, 8, 10, 12, 20, -40, -5, -1])
def test_truncated_patch_is_refused(cut: int, installed: tuple[Path, TreeManifest],
                                    tmp_path: Path) -> None:
    patch = valid_patch(installed, tmp_path)
    with pytest.raises(DeltaError) as caught:
        apply(patch[:cut], installed)
    assert "\n" not in str(caught.value)


def test_patch_made_against_another_tree_is_refused(installed: tuple[Path, TreeManifest],
                                                    tmp_path: Path) -> None:
    other = make_tree(tmp_path / "other", {**OLD, "bin/app": "#!/bin/sh\necho 0\n"})
    new = make_tree(tmp_path / "new", {**OLD, "bin/app": "#!/bin/sh\necho 2\n"})
    out = io.BytesIO()
    make_delta(other, scan_tree(other), new, scan_tree(new), out)
    with pytest.raises(DeltaError, match="patch was made from a different tree than the "
                                         "installed one"):
        apply(out.getvalue(), installed)


def test_tampered_installed_file_is_an_integrity_error(installed: tuple[Path, TreeManifest],
                                                       tmp_path: Path) -> None:
    patch = valid_patch(installed, tmp_path)
    root, _ = installed
    (root / "lib/blob").write_bytes(b"x" * 10240)       # same size, other content
    with pytest.raises(IntegrityError, match="lib/blob: installed file does not match its "
                                             "manifest"):
        apply(patch, installed)


def test_missing_installed_file_is_an_integrity_error(installed: tuple[Path, TreeManifest],
                                                      tmp_path: Path) -> None:
    patch = valid_patch(installed, tmp_path)
    root, _ = installed
    (root / "lib/data.txt").unlink()
    with pytest.raises(IntegrityError, match=r"lib/data\.txt: installed file is missing"):
        apply(patch, installed)


def test_the_valid_patch_of_these_tests_applies(installed: tuple[Path, TreeManifest],
                                                tmp_path: Path) -> None:
    rebuilt = apply(valid_patch(installed, tmp_path), installed)
    assert rebuilt == scan_tree(tmp_path / "new")


# -- the native appliers, fed corrupt diffs ----------------------------------------------------

OLD_BLOB = random.Random(1).randbytes(4000)
NEW_BLOB = OLD_BLOB[:1000] + b"inserted" + OLD_BLOB[1000:3000] + random.Random(2).randbytes(50)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                max_size=4), st.integers(0, 10_000))
def test_damaged_hdiff_payload_fails_cleanly(flips: list[tuple[int, int]], cut: int) -> None:
    diff = bytearray(hdiff_encode(OLD_BLOB, NEW_BLOB))
    for at, value in flips:
        diff[at % len(diff)] = value
    damaged = bytes(diff[:max(12, cut % (len(diff) + 1))])
    try:
        result = hdiff_apply(OLD_BLOB, damaged, len(NEW_BLOB))
    except DeltaError as e:
        message = str(e)
    else:
        message = ""
        assert len(result) == len(NEW_BLOB)   # wrong bytes are caught by the tree digest
    assert "\n" not in message


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                max_size=4))
def test_damaged_bsdiff_payload_fails_cleanly(flips: list[tuple[int, int]]) -> None:
    blob, control = bsdiff_encode(OLD_BLOB, NEW_BLOB)
    damaged = bytearray(blob)
    for at, value in flips:
        damaged[at % len(damaged)] = value
    try:
        result = bsdiff_apply(OLD_BLOB, bytes(damaged), control, len(NEW_BLOB))
    except DeltaError as e:
        message = str(e)
    else:
        message = ""
        assert len(result) == len(NEW_BLOB)
    assert "\n" not in message
