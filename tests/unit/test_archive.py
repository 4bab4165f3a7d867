"""Release archives: deterministic output, faithful round trips, and a paranoid unpacker.

Hostile archives are built here by hand with ``tarfile`` and ``zstandard``, the way an
attacker would, not with fleetup's own builder.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from fleetup._archive import build_archive, extract_archive
from fleetup._manifest import TreeManifest, scan_tree
from fleetup.errors import ArchiveError, SourceTreeError, StorageError, UnsafeArchiveError
from tests.support.trees import Dir, File, Link, make_tree, sample_app

MiB = 1 << 20


def archive_of(root: Path, manifest: TreeManifest | None = None) -> bytes:
    out = io.BytesIO()
    build_archive(root, manifest or scan_tree(root), out)
    return out.getvalue()


def unpack(data: bytes, dest: Path, *, max_size: int = MiB, max_entries: int = 100
           ) -> TreeManifest:
    return extract_archive(io.BytesIO(data), dest, max_size=max_size, max_entries=max_entries)


# -- determinism ---------------------------------------------------------------------------


def test_the_same_tree_gives_the_same_bytes(tmp_path: Path) -> None:
    root = sample_app(tmp_path / "app", "1.0.0")
    assert archive_of(root) == archive_of(root)


def test_bytes_ignore_location_mtimes_owners_and_creation_order(tmp_path: Path) -> None:
    original = sample_app(tmp_path / "one", "1.0.0")
    reference = archive_of(original)

    copy = tmp_path / "elsewhere" / "deeper" / "two"
    shutil.copytree(original, copy, symlinks=True)
    for n, path in enumerate(sorted(copy.rglob("*"), reverse=True)):
        os.utime(path, (1_000_000 + n, 2_000_000 + 7 * n), follow_symlinks=False)
    try:
        for path in [copy, *copy.rglob("*")]:
            os.chown(path, 1234, 5678, follow_symlinks=False)
    except PermissionError:
        pytest.skip("changing owners needs root; mtimes and location were checked above")
    assert archive_of(copy) == reference

    # The same entries created in the opposite order (directory order on disk differs).
    spec_paths = sorted((p.relative_to(original) for p in original.rglob("*")), reverse=True)
    third = tmp_path / "three"
    third.mkdir()
    for rel in spec_paths:
        src, dst = original / rel, third / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_dir():
            dst.mkdir(exist_ok=True)
        else:
            shutil.copyfile(src, dst)
    for rel in spec_paths:
        if not (original / rel).is_symlink():
            (third / rel).chmod((original / rel).stat().st_mode & 0o777)
    assert archive_of(third) == reference


def test_a_different_tree_gives_different_bytes(tmp_path: Path) -> None:
    one = archive_of(sample_app(tmp_path / "a", "1.0.0"))
    two = archive_of(sample_app(tmp_path / "b", "1.0.1"))
    assert one != two


# -- round trip ------------------------------------------------------------------------------


def test_round_trip_keeps_contents_modes_exec_bits_and_links(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src", {
        "bin/tool": File(b"#!/bin/sh\nexit 0\n", 0o755),
        "bin/link": Link("tool"),
        "lib": Dir(0o750),
        "lib/private.key": File(b"k", 0o600),
        "lib/empty": b"",
        "ro": Dir(0o555),
        "ro/inside": File(b"x" * 3000, 0o444),
        "to-dir": Link("lib"),
        "up-and-back": Link("lib/../bin/tool"),
        "dangling": Link("not-there"),
    })
    manifest = scan_tree(root)
    dest = tmp_path / "dest"
    result = unpack(archive_of(root), dest, max_size=manifest.size,
                    max_entries=len(manifest.entries))

    assert result == manifest
    assert scan_tree(dest).digest() == manifest.digest()
    assert os.access(dest / "bin/tool", os.X_OK)
    assert (dest / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (dest / "lib/private.key").stat().st_mode & 0o777 == 0o600
    assert (dest / "lib").stat().st_mode & 0o777 == 0o750
    assert (dest / "ro").stat().st_mode & 0o777 == 0o555
    assert (dest / "ro/inside").read_bytes() == b"x" * 3000
    assert os.readlink(dest / "bin/link") == "tool"
    assert os.readlink(dest / "to-dir") == "lib"
    assert os.readlink(dest / "dangling") == "not-there"
    assert (dest / "up-and-back").read_bytes() == b"#!/bin/sh\nexit 0\n"


def test_round_trip_of_long_paths_and_link_targets_within_exact_bounds(tmp_path: Path) -> None:
    # Names and targets this long need PAX headers: the unpacker's byte budget must
    # still allow them when the bounds are exactly the tree's size and entry count.
    part = "d" * 200
    deep = "/".join([part] * 15)                         # 3014 characters
    spec: dict[str, File | Dir | Link | bytes | str] = {
        f"{deep}/f{i}": f"{i}" for i in range(20)}
    spec["lnk"] = Link("./" * 2000 + "x")                # a 4001-character target
    spec[f"{deep}/é-ü"] = b"non-ascii name"
    root = make_tree(tmp_path / "long", spec)
    manifest = scan_tree(root)
    result = unpack(archive_of(root), tmp_path / "dest", max_size=manifest.size,
                    max_entries=len(manifest.entries))
    assert result.digest() == manifest.digest()


def test_progress_reports_every_byte_written(tmp_path: Path) -> None:
    root = sample_app(tmp_path / "app", "1.0.0", payload_size=3 * MiB)
    manifest = scan_tree(root)
    seen: list[int] = []
    extract_archive(io.BytesIO(archive_of(root)), tmp_path / "dest", max_size=manifest.size,
                    max_entries=len(manifest.entries), on_progress=seen.append)
    assert sum(seen) == manifest.size
    assert len(seen) > 1


def test_exact_bounds_pass_and_one_less_is_refused(tmp_path: Path) -> None:
    root = sample_app(tmp_path / "app", "1.0.0", payload_size=1000)
    manifest = scan_tree(root)
    data = archive_of(root)
    size, count = manifest.size, len(manifest.entries)
    unpack(data, tmp_path / "ok", max_size=size, max_entries=count)
    with pytest.raises(UnsafeArchiveError, match="expands past the signed size"):
        unpack(data, tmp_path / "small", max_size=size - 1, max_entries=count)
    with pytest.raises(UnsafeArchiveError, match=f"more entries than the signed {count - 1}"):
        unpack(data, tmp_path / "few", max_size=size, max_entries=count - 1)


# -- hostile archives --------------------------------------------------------------------------


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *,
          link: str = "", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
    return info, data


def hostile(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    raw = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(raw, closefd=False) as zw, \
            tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return raw.getvalue()


DIR, SYM, LNK = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

REFUSED = {
    "dot-dot": ([entry("../evil", data=b"x")], r"'\.\./evil': '\.\.' in path"),
    "dot-dot-inside": ([entry("a", DIR), entry("a/../../evil", data=b"x")],
                       r"'a/\.\./\.\./evil': '\.\.' in path"),
    "absolute": ([entry("/etc/cron.d/evil", data=b"x")],
                 r"'/etc/cron\.d/evil': absolute path"),
    "backslash": ([entry("..\\..\\evil", data=b"x")], r"'\.\.\\\\\.\.\\\\evil': backslash"),
    "link-absolute": ([entry("ln", SYM, link="/etc/passwd")],
                      r"^ln: symlink to '/etc/passwd' leads outside the tree"),
    "link-up": ([entry("d", DIR), entry("d/ln", SYM, link="../../x")],
                r"^d/ln: symlink to '\.\./\.\./x' leads outside"),
    "link-chain": ([entry("a", SYM, link="b"), entry("b", SYM, link="..")],
                   r"^a: symlink to 'b' leads outside"),
    "link-loop": ([entry("a", SYM, link="b"), entry("b", SYM, link="a")],
                  r"^a: symlink to 'b' leads outside"),
    "through-link": ([entry("sub", DIR), entry("ln", SYM, link="sub"),
                      entry("ln/x", data=b"x")],
                     r"^ln/x: would be written through symlink ln"),
    "through-link-deep": ([entry("ln", SYM, link="."), entry("ln/a/b", data=b"x")],
                          r"^ln/a/b: would be written through symlink ln"),
    "hard-link": ([entry("f", data=b"x"), entry("hl", LNK, link="f")],
                  r"^hl: hard link not allowed"),
    "char-device": ([entry("null", tarfile.CHRTYPE)], r"^null: device, FIFO"),
    "block-device": ([entry("sda", tarfile.BLKTYPE)], r"^sda: device, FIFO"),
    "fifo": ([entry("pipe", tarfile.FIFOTYPE)], r"^pipe: device, FIFO"),
    "contiguous": ([entry("cont", tarfile.CONTTYPE, b"x")], r"^cont: device, FIFO"),
    "duplicate-file": ([entry("a", data=b"1"), entry("a", data=b"2")],
                       r"^a: duplicate entry"),
    "dir-then-file": ([entry("a", DIR), entry("a", data=b"2")], r"^a: duplicate entry"),
    "file-then-link": ([entry("a", data=b"1"), entry("a", SYM, link="b")],
                       r"^a: duplicate entry"),
    "missing-parent": ([entry("nodir/x", data=b"x")],
                       r"^nodir/x: its parent directory is not in the tree"),
    "parent-is-file": ([entry("f", data=b"x"), entry("f/x", data=b"x")],
                       r"^f/x: its parent directory is not in the tree"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unpacker_refuses_and_names_the_entry(tmp_path: Path, case: str) -> None:
    members, message = REFUSED[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "tree").mkdir()
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack(hostile(*members), tmp_path / "tree" / "dest")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "tree" / "evil").exists()
    assert not (tmp_path / "evil").exists()


def test_nothing_is_written_through_a_link_to_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = hostile(entry("ln", SYM, link=str(outside)), entry("ln/planted", data=b"x"))
    with pytest.raises(UnsafeArchiveError, match="ln/planted: would be written through"):
        unpack(data, tmp_path / "dest")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dest" / "ln").exists()   # links are only made at the end


def test_bomb_that_claims_more_than_the_signed_size(tmp_path: Path) -> None:
    info = tarfile.TarInfo("big")
    info.size = 50 << 30                              # claims 50 GiB, holds nothing
    raw = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(raw, closefd=False) as zw:
        zw.write(info.tobuf(tarfile.PAX_FORMAT))
        zw.write(b"\0" * 4096)
    with pytest.raises(UnsafeArchiveError, match=r"^big: tree expands past the signed size"):
        unpack(raw.getvalue(), tmp_path / "dest", max_size=MiB)


def test_bomb_that_contains_more_than_the_signed_size(tmp_path: Path) -> None:
    data = hostile(entry("zeros", data=bytes(8 * MiB)))
    assert len(data) < 8 * MiB // 1000                  # it is small on the wire
    with pytest.raises(UnsafeArchiveError, match=r"^zeros: tree expands past"):
        unpack(data, tmp_path / "dest", max_size=MiB)
    assert not (tmp_path / "dest" / "zeros").exists() or \
        (tmp_path / "dest" / "zeros").stat().st_size == 0


def test_bomb_spread_over_many_files_names_the_one_that_crosses(tmp_path: Path) -> None:
    data = hostile(*(entry(f"part{i}", data=bytes(400 << 10)) for i in range(4)))
    with pytest.raises(UnsafeArchiveError, match=r"^part2: tree expands past"):
        unpack(data, tmp_path / "dest", max_size=MiB)


def test_more_entries_than_signed(tmp_path: Path) -> None:
    data = hostile(*(entry(f"e{i}", DIR) for i in range(6)))
    with pytest.raises(UnsafeArchiveError, match=r"^e5: more entries than the signed 5"):
        unpack(data, tmp_path / "dest", max_entries=5)


def test_header_bomb_is_refused_without_reading_it_into_memory(tmp_path: Path) -> None:
    # tarfile reads a PAX header whole into memory: one claiming 300 MiB costs
    # 300 MiB of RAM unless the unpacker stops decompressing first. This one is ~10 KB.
    claimed = 300 * MiB
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = claimed
    raw = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as zw:
        zw.write(info.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(claimed // MiB):
            zw.write(bytes(MiB))
    assert len(raw.getvalue()) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match="archive expands past"):
            unpack(raw.getvalue(), tmp_path / "dest", max_size=MiB, max_entries=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not-tar", "empty"])
def test_corrupt_archives_are_archive_errors(tmp_path: Path, damage: str) -> None:
    good = archive_of(sample_app(tmp_path / "app", "1.0.0"))
    data = {
        "garbage": os.urandom(5000),
        "truncated": good[: len(good) // 2],
        "not-tar": zstandard.ZstdCompressor().compress(b"hello world, no tar here " * 100),
        "empty": b"",
    }[damage]
    with pytest.raises(ArchiveError) as info:
        unpack(data, tmp_path / "dest", max_size=10 * MiB)
    if damage != "empty":
        assert not isinstance(info.value, UnsafeArchiveError)


def test_unpacking_into_an_existing_directory_is_refused(tmp_path: Path) -> None:
    data = archive_of(sample_app(tmp_path / "app", "1.0.0"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(StorageError, match="cannot create"):
        unpack(data, tmp_path / "dest")


# -- building from a tree that changes ---------------------------------------------------------


@pytest.mark.parametrize("change", [b"", b"short", b"y" * 4096, b"x" * 4097])
def test_a_file_changed_after_the_scan_is_reported(tmp_path: Path, change: bytes) -> None:
    root = make_tree(tmp_path / "src", {"a/file": b"x" * 4096, "b": b"unchanged"})
    manifest = scan_tree(root)
    (root / "a/file").write_bytes(change)
    if change == b"x" * 4097:
        # Appended after the scan: the archive takes the scanned bytes and stays right.
        assert unpack(archive_of(root, manifest), tmp_path / "d").digest() == manifest.digest()
        return
    with pytest.raises(SourceTreeError, match="a/file changed while the release"):
        archive_of(root, manifest)
