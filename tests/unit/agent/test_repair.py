"""``repair_tree``: mending an installed tree in place from a verified archive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetup._facts import ReleaseFacts
from fleetup._manifest import scan_tree
from fleetup.agent._repair import repair_tree
from fleetup.agent._stage import stage_archive
from fleetup.agent._store import DeviceStore
from fleetup.errors import ArchiveError, IntegrityError
from fleetup.repository import FileRepository, RepoConfig, RepoLayout, releases_of, target_file_name
from tests.support.releases import SampleRepo
from tests.support.trees import fingerprint


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> SampleRepo:
    repo = SampleRepo.create(tmp_path_factory.mktemp("repair"))
    repo.publish("1.0")
    repo.publish("1.1")
    return repo


def published(repo: SampleRepo, version: str) -> tuple[ReleaseFacts, Path]:
    """The signed facts and the archive file of ``version``."""
    layout = RepoLayout(repo.path)
    targets = FileRepository(layout, RepoConfig.load(layout.config)).targets()
    for target, facts in releases_of(targets).values():
        if facts.version == version:
            return facts, target_file_name(layout, target)
    raise AssertionError(f"{version} is not published")


@pytest.fixture
def store(repo: SampleRepo, tmp_path: Path) -> DeviceStore:
    store = DeviceStore(tmp_path / "device")
    store.ensure()
    facts, archive = published(repo, "1.0")
    stage_archive(store, facts, archive)
    return store


def tree(store: DeviceStore) -> Path:
    return store.layout.release_dir("1.0")


def damage(root: Path) -> None:
    (root / "VERSION").write_text("tampered\n")            # changed content
    (root / "health.sh").chmod(0o777)                      # changed mode
    (root / "share" / "README.txt").unlink()               # missing file
    (root / "bin" / "dropped").write_text("extra")         # extra file
    (root / "extra-dir" / "deep").mkdir(parents=True)      # extra directories
    (root / "bin" / "run").unlink()
    os.symlink("/etc/passwd", root / "bin" / "run")        # re-pointed symlink
    (root / "docs").unlink()
    (root / "docs").mkdir()                                # a dir where a link belongs
    (root / "var" / "empty").rmdir()
    (root / "var" / "empty").write_text("a file where a dir belongs")


def test_repair_restores_every_kind_of_damage(repo: SampleRepo, store: DeviceStore) -> None:
    facts, archive = published(repo, "1.0")
    damage(tree(store))
    assert fingerprint(tree(store)) != fingerprint(repo.source("1.0"))
    repair_tree(store, facts, archive)
    assert scan_tree(tree(store)).digest() == facts.tree_digest
    assert fingerprint(tree(store)) == fingerprint(repo.source("1.0"))
    manifest, saved = store.load_manifest("1.0")
    assert manifest.digest() == facts.tree_digest
    assert saved == facts
    assert [p.name for p in store.layout.releases.iterdir()] == ["1.0"]  # no leftovers


def test_a_link_out_of_the_tree_does_not_stop_extras_being_removed(
        repo: SampleRepo, store: DeviceStore) -> None:
    # The tree cannot even be scanned (the link escapes): every entry is replaced, and
    # what does not belong still has to go.
    facts, archive = published(repo, "1.0")
    root = tree(store)
    (root / "bin" / "run").unlink()
    os.symlink("../../../../etc", root / "bin" / "run")
    (root / "planted").write_text("extra")
    repair_tree(store, facts, archive)
    assert fingerprint(root) == fingerprint(repo.source("1.0"))


def test_repair_mends_in_place_and_leaves_intact_files_alone(repo: SampleRepo,
                                                             store: DeviceStore) -> None:
    facts, archive = published(repo, "1.0")
    root = tree(store)
    root_inode = root.stat().st_ino
    intact_inode = (root / "bin" / "app").stat().st_ino
    (root / "VERSION").write_text("tampered\n")
    repair_tree(store, facts, archive)
    assert root.stat().st_ino == root_inode        # the tree was never missing as a whole
    assert (root / "bin" / "app").stat().st_ino == intact_inode
    assert (root / "VERSION").read_text() == "1.0\n"


def test_repair_of_an_intact_tree_changes_nothing(repo: SampleRepo,
                                                  store: DeviceStore) -> None:
    facts, archive = published(repo, "1.0")
    inodes = {p: p.lstat().st_ino for p in tree(store).rglob("*")}
    repair_tree(store, facts, archive)
    assert {p: p.lstat().st_ino for p in tree(store).rglob("*")} == inodes


def test_an_archive_of_another_release_is_refused_and_nothing_changes(
        repo: SampleRepo, store: DeviceStore) -> None:
    facts, _ = published(repo, "1.0")
    _, other_archive = published(repo, "1.1")
    (tree(store) / "VERSION").write_text("tampered\n")
    before = fingerprint(tree(store))
    with pytest.raises(IntegrityError, match=r"the downloaded 1\.0 does not match"):
        repair_tree(store, facts, other_archive)
    assert fingerprint(tree(store)) == before
    assert [p.name for p in store.layout.releases.iterdir()] == ["1.0"]


def test_a_corrupt_archive_is_refused_and_nothing_changes(repo: SampleRepo,
                                                          store: DeviceStore,
                                                          tmp_path: Path) -> None:
    facts, archive = published(repo, "1.0")
    broken = tmp_path / "broken.tar.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    broken.write_bytes(bytes(data))
    (tree(store) / "VERSION").write_text("tampered\n")
    before = fingerprint(tree(store))
    with pytest.raises(ArchiveError):
        repair_tree(store, facts, broken)
    assert fingerprint(tree(store)) == before
    assert [p.name for p in store.layout.releases.iterdir()] == ["1.0"]
