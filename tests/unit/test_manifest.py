"""Tree manifests: canonical form and digest (pure), and scan_tree on real directories."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetup._manifest import Entry, EntryType, TreeManifest, scan_tree
from fleetup.errors import SourceTreeError
from tests.support.trees import Dir, File, Link, make_tree, sample_app

SHA_A = "a" * 64
BASE = [
    Entry("bin", EntryType.DIR, 0o755),
    Entry("bin/run", EntryType.FILE, 0o755, 3, SHA_A),
    Entry("link", EntryType.LINK, 0o777, target="bin/run"),
]


# -- the canonical form and digest ------------------------------------------------------


def test_canonical_json_and_digest_are_pinned() -> None:
    # Devices compare this digest with the signed one: its bytes must never drift.
    expected = (
        b'[{"mode":493,"path":"bin","type":"dir"},'
        b'{"mode":493,"path":"bin/run","sha256":"' + SHA_A.encode() + b'","size":3,'
        b'"type":"file"},{"path":"link","target":"bin/run","type":"link"}]'
    )
    manifest = TreeManifest.of(BASE)
    assert manifest.to_json() == expected
    assert manifest.digest() == "sha256:" + hashlib.sha256(expected).hexdigest()


@given(st.permutations(BASE))
def test_digest_does_not_depend_on_entry_order(entries: list[Entry]) -> None:
    assert TreeManifest.of(entries).digest() == TreeManifest.of(BASE).digest()


def test_entries_sort_parents_before_children() -> None:
    names = ["a-b", "a/b", "a", "a/b/c", "a.b", "b"]
    manifest = TreeManifest.of(Entry(n, EntryType.DIR) for n in names)
    order = [e.path for e in manifest.entries]
    assert order == ["a", "a/b", "a/b/c", "a-b", "a.b", "b"]


@pytest.mark.parametrize("changed", [
    Entry("bin/run", EntryType.FILE, 0o644, 3, SHA_A),          # exec bit dropped
    Entry("bin/run", EntryType.FILE, 0o755, 4, SHA_A),          # size
    Entry("bin/run", EntryType.FILE, 0o755, 3, "b" * 64),       # content
    Entry("bin/run", EntryType.LINK, 0o777, target="x"),        # type
])
def test_digest_changes_with_every_field_of_a_file(changed: Entry) -> None:
    entries = [changed if e.path == changed.path else e for e in BASE]
    assert TreeManifest.of(entries).digest() != TreeManifest.of(BASE).digest()


def test_digest_changes_with_link_target_dir_mode_and_paths() -> None:
    digests = {
        TreeManifest.of(BASE).digest(),
        TreeManifest.of([BASE[0], BASE[1], Entry("link", EntryType.LINK, target="bin")]).digest(),
        TreeManifest.of([Entry("bin", EntryType.DIR, 0o700), *BASE[1:]]).digest(),
        TreeManifest.of([*BASE[:2], Entry("link2", EntryType.LINK, target="bin/run")]).digest(),
        TreeManifest.of(BASE[:2]).digest(),
    }
    assert len(digests) == 5


entry_names = st.lists(st.sampled_from(["a", "b", "é", "c d"]), min_size=1, max_size=3).map(
    "/".join)
entries = st.one_of(
    st.builds(Entry, entry_names, st.just(EntryType.DIR), st.integers(0, 0o777)),
    st.builds(Entry, entry_names, st.just(EntryType.FILE), st.integers(0, 0o777),
              st.integers(0, 2**40), st.text("0123456789abcdef", min_size=64, max_size=64)),
    st.builds(lambda p, t: Entry(p, EntryType.LINK, 0o777, target=t), entry_names,
              st.text(min_size=1, max_size=20)),
)


@given(st.lists(entries, max_size=8, unique_by=lambda e: e.path))
def test_to_json_from_json_round_trip(items: list[Entry]) -> None:
    manifest = TreeManifest.of(items)
    again = TreeManifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.digest() == manifest.digest()


@pytest.mark.parametrize("data", [
    b"not json",
    b'{"path": "a"}',
    b'[{"path": "a"}]',
    b'[{"path": "a", "type": "socket"}]',
    b'[{"path": "../a", "type": "dir", "mode": 493}]',
    b'[{"path": "/a", "type": "dir", "mode": 493}]',
    b'[{"path": "a", "type": "dir", "mode": -1}]',
    b'[{"path": "a", "type": "dir", "mode": true}]',
    b'[{"path": "a", "type": "file", "mode": 420, "size": "3", "sha256": "x"}]',
    b'[{"path": "a", "type": "link"}]',
    b'[["a", "dir"]]',
])
def test_from_json_refuses_what_is_not_a_manifest(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the documented contract is ValueError
        TreeManifest.from_json(data)


def test_size_diff_links_and_lookup() -> None:
    old = TreeManifest.of(BASE)
    new = TreeManifest.of([
        BASE[0], Entry("bin/run", EntryType.FILE, 0o755, 5, "b" * 64),
        Entry("new", EntryType.FILE, 0o644, 7, SHA_A)])
    assert new.size == 12
    assert old.diff(new) == ["bin/run", "link", "new"]
    assert old.diff(old) == []
    assert old.links() == {"link": "bin/run"}
    assert old.by_path()["bin"].type is EntryType.DIR


def test_escaping_link_found_through_another_link() -> None:
    manifest = TreeManifest.of([Entry("a", EntryType.LINK, target="b"),
                                Entry("b", EntryType.LINK, target="../outside"),
                                Entry("c", EntryType.LINK, target="a")])
    found = manifest.escaping_link()
    assert found is not None
    assert found.path == "a"


# -- scan_tree ----------------------------------------------------------------------------


def test_scan_captures_types_modes_sizes_hashes_and_links(tmp_path: Path) -> None:
    root = sample_app(tmp_path / "app", "1.0.0", payload_size=1000)
    manifest = scan_tree(root)
    entries = manifest.by_path()

    hello = entries["bin/hello"]
    content = (root / "bin/hello").read_bytes()
    assert (hello.type, hello.mode, hello.size) == (EntryType.FILE, 0o755, len(content))
    assert hello.sha256 == hashlib.sha256(content).hexdigest()
    assert entries["etc/secret.conf"].mode == 0o600
    assert entries["share/doc/README"].mode == 0o644
    assert entries["bin/current"] == Entry("bin/current", EntryType.LINK, 0o777,
                                           target="hello")
    # A link to a directory is recorded as a link and not descended into.
    assert entries["doc"].type is EntryType.LINK
    assert not any(p.startswith("doc/") for p in entries)
    assert entries["var/empty"].type is EntryType.DIR
    assert manifest.size == sum((root / e.path).stat().st_size for e in manifest.entries
                                if e.type is EntryType.FILE)
    assert [e.path for e in manifest.entries] == [e.path for e in TreeManifest.of(
        manifest.entries).entries]


def test_scan_keeps_odd_modes_and_dangling_in_tree_links(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {
        "private": Dir(0o700),
        "private/x": File(b"", 0o400),
        "setuid": File(b"#!", 0o4755),
        "later": Link("not/yet/there"),
    })
    entries = scan_tree(root).by_path()
    assert entries["private"].mode == 0o700
    assert (entries["private/x"].mode, entries["private/x"].size) == (0o400, 0)
    assert entries["setuid"].mode == 0o755       # only permission bits are published
    assert entries["later"].target == "not/yet/there"


def test_same_content_elsewhere_with_other_mtimes_has_the_same_digest(tmp_path: Path) -> None:
    one = sample_app(tmp_path / "one", "1.0.0")
    two = tmp_path / "elsewhere" / "two"
    shutil.copytree(one, two, symlinks=True)
    for path in two.rglob("*"):
        os.utime(path, (1, 1), follow_symlinks=False)
    assert scan_tree(one).digest() == scan_tree(two).digest()
    (two / "VERSION").chmod(0o600)
    assert scan_tree(one).digest() != scan_tree(two).digest()


@pytest.mark.parametrize(("target", "extra"), [
    ("/etc/passwd", {}),
    ("../outside", {}),
    ("sub/../../outside", {}),
    ("hop", {"hop": Link("..")}),                # escapes through another link
    ("self", {}),                                # a loop
])
def test_scan_refuses_links_leaving_the_tree(tmp_path: Path, target: str,
                                             extra: dict[str, Link]) -> None:
    root = make_tree(tmp_path / "t", {"sub/f": "x", "self": Link("self"), **extra,
                                      "bad": Link(target)})
    with pytest.raises(SourceTreeError, match="points outside the tree") as info:
        scan_tree(root)
    assert "bad" in str(info.value) or "hop" in str(info.value) or "self" in str(info.value)


def test_scan_refuses_a_fifo(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"ok": "x"})
    os.mkfifo(root / "pipe")
    with pytest.raises(SourceTreeError, match="pipe: not a regular file"):
        scan_tree(root)


def test_scan_refuses_a_socket(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"ok": "x"})
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        with pytest.raises(SourceTreeError, match="sock: not a regular file"):
            scan_tree(root)
    finally:
        sock.close()


def test_scan_refuses_a_device(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"ok": "x"})
    try:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating device nodes is not permitted here (needs CAP_MKNOD)")
    with pytest.raises(SourceTreeError, match="null: not a regular file"):
        scan_tree(root)


def test_scan_refuses_names_no_device_would_unpack(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"dir/a\\b": "x"})
    with pytest.raises(SourceTreeError, match="backslash"):
        scan_tree(root)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_scan_refuses_a_root_that_is_not_a_directory(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "src"
    if kind == "file":
        root.write_text("x")
    with pytest.raises(SourceTreeError, match="not a directory"):
        scan_tree(root)


def test_scan_reports_an_unreadable_file_in_one_line(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file, so the denial is injected where scan_tree opens files.
    root = make_tree(tmp_path / "t", {"a/secret": "x"})

    def denied(path: Path) -> tuple[str, int]:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("fleetup._manifest.hash_file", denied)
    with pytest.raises(SourceTreeError) as info:
        scan_tree(root)
    assert str(info.value) == f"cannot read {root / 'a/secret'}: Permission denied"


def test_scan_json_is_what_the_digest_covers(tmp_path: Path) -> None:
    manifest = scan_tree(sample_app(tmp_path / "app", "2.0", payload_size=10))
    body = json.loads(manifest.to_json())
    assert [item["path"] for item in body] == [e.path for e in manifest.entries]
    assert [item["path"] for item in body] == [
        "VERSION", "bin", "bin/current", "bin/health", "bin/hello", "doc", "etc",
        "etc/secret.conf",
        "lib", "lib/payload.bin", "share", "share/doc", "share/doc/README", "var",
        "var/empty"]
