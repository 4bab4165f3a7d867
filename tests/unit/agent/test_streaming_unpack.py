"""Unpacking while downloading: accepted only whole, verified and signed; never blocking."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import zstandard

from fleetup._facts import ReleaseFacts
from fleetup._manifest import scan_tree
from fleetup.agent._stage import StreamingUnpack
from fleetup.agent._store import DeviceStore
from fleetup.repository import FileRepository, RepoConfig, RepoLayout, releases_of, target_file_name
from tests.support.releases import SampleRepo

CHUNK = 16 << 10


def _archive(repo: SampleRepo, version: str) -> tuple[ReleaseFacts, bytes]:
    layout = RepoLayout(repo.path)
    targets = FileRepository(layout, RepoConfig.load(layout.config)).targets()
    for target, facts in releases_of(targets).values():
        if facts.version == version:
            return facts, target_file_name(layout, target).read_bytes()
    raise AssertionError(version)


def _release(tmp_path: Path, payload_size: int = 256 << 10) -> tuple[ReleaseFacts, bytes]:
    """Release 1.0 of a fresh sample repository: its signed facts and archive bytes."""
    repo = SampleRepo.create(tmp_path)
    repo.publish("1.0", payload_size=payload_size)
    return _archive(repo, "1.0")


def _device(tmp_path: Path, facts: ReleaseFacts) -> tuple[DeviceStore, StreamingUnpack]:
    """An empty device and a streaming unpack of the release ``facts`` describe."""
    store = DeviceStore(tmp_path / "device")
    store.ensure()
    return store, StreamingUnpack(store, facts)


def _feed(unpack: StreamingUnpack, data: bytes, start: int = 0) -> None:
    for offset in range(start, len(data), CHUNK):
        unpack(offset, data[offset:offset + CHUNK])


def test_a_whole_verified_stream_becomes_the_installed_tree(tmp_path: Path) -> None:
    facts, data = _release(tmp_path)
    store, unpack = _device(tmp_path, facts)
    _feed(unpack, data)
    assert unpack.accept()
    assert store.kept_versions() == ["1.0"]
    assert scan_tree(store.layout.release_dir("1.0")).digest() == facts.tree_digest
    assert not store.layout.partial_dir("1.0").exists()


def test_a_resumed_download_is_not_unpacked_on_the_fly(tmp_path: Path) -> None:
    facts, data = _release(tmp_path)
    store, unpack = _device(tmp_path, facts)
    _feed(unpack, data, start=CHUNK * 2)  # the first bytes came in an earlier run
    assert not unpack.accept()
    assert store.kept_versions() == []
    assert not store.layout.partial_dir("1.0").exists()


def test_a_restarted_body_abandons_the_stream(tmp_path: Path) -> None:
    facts, data = _release(tmp_path)
    store, unpack = _device(tmp_path, facts)
    unpack(0, data[:CHUNK])
    _feed(unpack, data)  # the server started over: offset 0 again
    assert not unpack.accept()
    assert store.kept_versions() == []


def test_a_hostile_archive_stops_the_worker_without_blocking_the_download(
        tmp_path: Path) -> None:
    facts, _ = _release(tmp_path, payload_size=32 << 10)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        evil = tarfile.TarInfo("../evil")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"bad"))
        filler = tarfile.TarInfo("filler")
        filler.size = 4 << 20
        tar.addfile(filler, io.BytesIO(b"\0" * (4 << 20)))
    data = zstandard.ZstdCompressor(level=1).compress(raw.getvalue())
    store, unpack = _device(tmp_path, facts)
    _feed(unpack, data * 20)  # far more than the queue holds: must not hang
    assert not unpack.accept()
    assert unpack.error is not None
    assert "'..' in path" in str(unpack.error)
    assert not (tmp_path / "evil").exists()
    assert not store.layout.partial_dir("1.0").exists()


def test_a_stream_of_another_tree_is_refused(tmp_path: Path) -> None:
    repo = SampleRepo.create(tmp_path)
    repo.publish("1.0")
    repo.publish("1.1")
    facts_10, _ = _archive(repo, "1.0")
    _, data_11 = _archive(repo, "1.1")
    store, unpack = _device(tmp_path, facts_10)
    _feed(unpack, data_11)
    assert not unpack.accept()
    assert store.kept_versions() == []


def test_a_failed_download_discards_what_was_unpacked(tmp_path: Path) -> None:
    facts, data = _release(tmp_path)
    store, unpack = _device(tmp_path, facts)
    unpack(0, data[: len(data) // 2])
    unpack.discard()
    assert not store.layout.partial_dir("1.0").exists()
    assert store.kept_versions() == []


def test_a_stream_whose_tar_ends_before_its_last_bytes_is_still_accepted(
        tmp_path: Path) -> None:
    # The tar's end comes before the archive's (end blocks, padding, the zstd epilogue):
    # a worker that stopped there left the end of the download to a dead thread, and
    # every real update unpacked the archive a second time.
    facts, data = _release(tmp_path)
    store, unpack = _device(tmp_path, facts)
    _feed(unpack, data)
    deadline = time.monotonic() + 30
    while not unpack._queue.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    unpack._worker.join(timeout=0.2)  # the old worker had ended by now
    assert unpack.accept()
    assert store.kept_versions() == ["1.0"]
