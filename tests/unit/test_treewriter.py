"""TreeWriter: the one way a device writes a tree, driven directly (no tar involved)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetup._manifest import Entry, EntryType, scan_tree
from fleetup._treewriter import TreeWriter, remove_tree
from fleetup.errors import StorageError, UnsafeArchiveError
from tests.support.trees import Dir, File, make_tree


def writer(tmp_path: Path, max_size: int = 1000, max_entries: int = 20) -> TreeWriter:
    return TreeWriter(tmp_path / "dest", max_size=max_size, max_entries=max_entries)


def test_written_tree_matches_its_returned_manifest(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.add_dir("bin", 0o755)
    entry = w.add_file("bin/run", 0o755, 6, iter([b"abc", b"def"]))
    w.add_link("run", "bin/run")
    w.add_dir("ro", 0o500)
    w.add_file("ro/f", 0o400, 1, [b"z"])
    manifest = w.finish()

    assert entry == Entry("bin/run", EntryType.FILE, 0o755, 6,
                          hashlib.sha256(b"abcdef").hexdigest())
    assert manifest == scan_tree(tmp_path / "dest")
    assert (tmp_path / "dest/ro").stat().st_mode & 0o777 == 0o500
    assert (tmp_path / "dest/run").read_bytes() == b"abcdef"


def test_modes_are_reduced_to_permission_bits(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.add_file("suid", 0o4755, 0, [])
    w.add_dir("sgid", 0o2775)
    manifest = w.finish()
    assert (tmp_path / "dest/suid").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "dest/sgid").stat().st_mode & 0o7777 == 0o775
    assert {e.mode for e in manifest.entries} == {0o755, 0o775}


@pytest.mark.parametrize(("kind", "mode"), [("dir", 0o1777), ("dir", 0o777), ("file", 0o666)])
def test_world_writable_entries_are_refused(tmp_path: Path, kind: str, mode: int) -> None:
    w = writer(tmp_path)
    add = (lambda: w.add_dir("x", mode)) if kind == "dir" else (
        lambda: w.add_file("x", mode, 0, []))
    with pytest.raises(UnsafeArchiveError, match=rf"^x: world-writable \(mode {mode:o}\)"):
        add()


def test_deeper_than_the_signed_depth_is_refused(tmp_path: Path) -> None:
    w = TreeWriter(tmp_path / "dest", max_size=0, max_entries=10, max_depth=2)
    w.add_dir("a", 0o755)
    w.add_dir("a/b", 0o755)
    with pytest.raises(UnsafeArchiveError, match=r"^a/b/c: deeper than the signed 2 levels"):
        w.add_dir("a/b/c", 0o755)


def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    path = str(root)
    os.mkdir(path)
    for _ in range(1500):  # what shutil.rmtree dies on (RecursionError)
        path += "/d"
        os.mkdir(path)
    Path(path, "f").write_bytes(b"x")
    os.chmod(path, 0o500)
    try:
        remove_tree(root)
        assert not root.exists()
    finally:  # never leave pytest (whose clean-up recurses) a tree it cannot remove
        if root.exists():
            os.chmod(path, 0o700)
            os.unlink(path + "/f")
            while path != str(root.parent):
                os.rmdir(path)
                path = os.path.dirname(path)


def test_more_data_than_declared_is_refused_while_streaming(tmp_path: Path) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 100

    w = writer(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"^f: more data than its declared size"):
        w.add_file("f", 0o644, 250, endless())


def test_less_data_than_declared_is_refused(tmp_path: Path) -> None:
    w = writer(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"^f: 3 bytes where 10 were declared"):
        w.add_file("f", 0o644, 10, [b"abc"])


def test_size_budget_is_cumulative_and_checked_before_writing(tmp_path: Path) -> None:
    w = writer(tmp_path, max_size=100)
    w.add_file("a", 0o644, 60, [b"a" * 60])
    with pytest.raises(UnsafeArchiveError, match=r"^b: tree expands past the signed size of 100"):
        w.add_file("b", 0o644, 41, [b"b" * 41])
    assert not (tmp_path / "dest/b").exists()
    w.add_file("c", 0o644, 40, [b"c" * 40])      # exactly up to the limit is fine


def test_entry_budget(tmp_path: Path) -> None:
    w = writer(tmp_path, max_entries=2)
    w.add_dir("a", 0o755)
    w.add_link("b", "a")
    with pytest.raises(UnsafeArchiveError, match=r"^c: more entries than the signed 2"):
        w.add_dir("c", 0o755)


def test_links_are_checked_only_once_all_are_known(tmp_path: Path) -> None:
    # "a" alone looks safe; "b", added later, makes it escape.
    w = writer(tmp_path)
    w.add_link("a", "b/x")
    w.add_link("b", "..")
    with pytest.raises(UnsafeArchiveError, match=r"^a: symlink to 'b/x' leads outside"):
        w.finish()
    assert not os.path.lexists(tmp_path / "dest/a")


def test_no_write_follows_a_symlink_planted_on_disk(tmp_path: Path) -> None:
    # Even if something put a link where a file goes, O_NOFOLLOW|O_EXCL refuses it.
    outside = tmp_path / "outside"
    w = writer(tmp_path)
    os.symlink(outside, tmp_path / "dest/f")
    with pytest.raises(StorageError):
        w.add_file("f", 0o644, 1, [b"x"])
    assert not outside.exists()


def test_existing_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    with pytest.raises(StorageError, match=r"cannot create .*dest: File exists"):
        writer(tmp_path)


def test_remove_tree_removes_read_only_trees_and_is_idempotent(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {
        "a": Dir(0o500), "a/b": Dir(0o500), "a/b/f": File(b"x", 0o400), "c": File(b"", 0o000)})
    (tmp_path / "keep").write_text("not removed through a link")
    (root / "a").chmod(0o700)
    os.symlink(tmp_path / "keep", root / "a/link")
    (root / "a").chmod(0o500)
    remove_tree(root)
    assert not root.exists()
    assert (tmp_path / "keep").read_text() == "not removed through a link"
    remove_tree(root)                                  # nothing there: no error


def test_remove_tree_removes_a_lone_file_or_link(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "f", tmp_path / "l")
    remove_tree(tmp_path / "l")
    assert (tmp_path / "f").exists()
    remove_tree(tmp_path / "f")
    assert not (tmp_path / "f").exists()
