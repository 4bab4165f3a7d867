"""FileRepository's transaction: what it writes in which order, and what it undoes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fleetup.errors import RepositoryError, StorageError
from fleetup.repository import RepoConfig, rotate_key
from fleetup.repository import _store as store
from tests.support.trees import fingerprint
from tests.unit.repository.conftest import PLATFORM, Publish


def test_commit_places_artifacts_then_metadata_and_the_timestamp_last_and_a_new_root_after(
        repo: Path, publish: Publish, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_replace, real_write = os.replace, store.atomic_write

    def replace(src: Any, dst: Any) -> None:
        if "/targets/" in str(dst):
            order.append(Path(dst).name.split(".", 1)[1])
        real_replace(src, dst)

    def write(path: Path, data: bytes, mode: int = 0o644) -> None:
        order.append(path.name)
        real_write(path, data, mode)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(store, "atomic_write", write)
    publish("1.0.0", payload_size=100)
    rotate_key(repo, "snapshot")
    assert order == [
        "hello-1.0.0.tar.zst", "index.json",
        "2.targets.json", "2.snapshot.json", "timestamp.json",
        # A rotation publishes the dual-signed metadata first and the new root last.
        "3.snapshot.json", "timestamp.json", "2.root.json", "root.json"]


def test_a_stale_temp_file_from_a_killed_publisher_does_not_block_the_next(
        repo: Path, publish: Publish, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    shutil.copytree(repo, pristine)
    publish("1.0.0", payload_size=100)        # archives are deterministic: learn the names
    target_dir = repo / "public/targets" / "hello" / PLATFORM
    stale = [f".{p.name}.tmp" for p in target_dir.iterdir()]
    assert len(stale) == 2                    # the archive and the index

    # Back to before the release, plus what a publisher killed between link() and
    # rename() leaves behind.
    shutil.rmtree(repo)
    shutil.copytree(pristine, repo)
    target_dir.mkdir(parents=True)
    for name in stale:
        (target_dir / name).write_bytes(b"half a file")

    added = publish("1.0.0", payload_size=100)
    assert sorted(p.name for p in target_dir.iterdir()) == sorted(n[1:-4] for n in stale)
    archive = next(target_dir.glob("*.tar.zst"))
    assert archive.stat().st_size == added.archive_size


def test_lock_leaves_no_file_behind(repo: Path) -> None:
    before = fingerprint(repo)
    layout = store.RepoLayout(repo)
    with store.repo_lock(layout), pytest.raises(RepositoryError, match="another publisher"), \
            store.repo_lock(layout):
        pass
    assert fingerprint(repo) == before


@pytest.mark.parametrize("content", ["", "{", "[]", '{"expiry_days": 5}',
                                     '{"expiry_days": {"root": "soon"}}',
                                     '{"expiry_days": {"root": 365}}'])
def test_unreadable_settings_are_repository_errors(repo: Path, content: str) -> None:
    (repo / "fleetup-repo.json").write_text(content)
    with pytest.raises(RepositoryError, match="unreadable repository settings"):
        RepoConfig.load(repo / "fleetup-repo.json")


def test_settings_round_trip(tmp_path: Path) -> None:
    config = RepoConfig(expiry_days={"root": 10.0, "targets": 5.0, "snapshot": 2.0,
                                     "timestamp": 0.25}, delta_count=1, compression_level=3)
    (tmp_path / "s.json").write_bytes(config.to_json())
    assert RepoConfig.load(tmp_path / "s.json") == config
    assert json.loads(config.to_json())["format"] == 1


def test_failed_commit_removes_new_directories_and_restores_replaced_files(
        repo: Path, publish: Publish, monkeypatch: pytest.MonkeyPatch) -> None:
    before = fingerprint(repo)
    real = store.atomic_write

    def full_at_timestamp(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == "timestamp.json":
            raise StorageError("cannot write timestamp.json: no space left on device")
        real(path, data, mode)

    monkeypatch.setattr(store, "atomic_write", full_at_timestamp)
    with pytest.raises(StorageError):
        publish("1.0.0", payload_size=100)       # creates targets/hello/<platform>/
    assert fingerprint(repo) == before
    with pytest.raises(StorageError):
        rotate_key(repo, "timestamp")            # replaces metadata/root.json
    assert fingerprint(repo) == before
