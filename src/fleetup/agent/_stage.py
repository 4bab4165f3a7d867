"""Building a release tree on the device: from the archive, or from a kept tree and a delta.

A tree is built in ``releases/<v>.partial``, checked against the signed tree digest,
flushed to disk, its manifest saved, then renamed to ``releases/<v>`` in one step.
Running it twice does no harm: a complete, verified tree is left alone, a stale
``.partial`` is removed first.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from fleetup import _failpoints as failpoints
from fleetup._archive import extract_archive
from fleetup._atomic import fsync_dir, storage_error
from fleetup._facts import ReleaseFacts
from fleetup._manifest import TreeManifest
from fleetup._treewriter import remove_tree
from fleetup.agent._install import discard_tree, tree_is_staged
from fleetup.agent._store import DeviceStore
from fleetup.errors import ArchiveError, IntegrityError

__all__ = ["StreamingUnpack", "stage_archive", "stage_delta"]

Progress = Callable[[int], None]

_CHUNK = 1 << 20


def stage_archive(store: DeviceStore, facts: ReleaseFacts, archive: Path,
                  progress: Progress | None = None) -> None:
    """Unpack a verified release archive into ``releases/<v>``.

    Raises:
        UnsafeArchiveError, ArchiveError: the archive is hostile or corrupt.
        IntegrityError: the unpacked tree is not the signed tree.
        StorageError: the disk refused.
    """
    def build(dest: Path) -> TreeManifest:
        try:
            with archive.open("rb") as f:
                return extract_archive(f, dest, max_size=facts.tree_size,
                                       max_entries=facts.tree_entries,
                                       max_depth=facts.depth_bound, on_progress=progress)
        except OSError as e:
            raise storage_error(e, f"read {archive}") from e

    _stage(store, facts, build)


def stage_delta(store: DeviceStore, facts: ReleaseFacts, patch: Path, base_version: str,
                progress: Progress | None = None) -> None:
    """Rebuild ``releases/<v>`` from the kept tree of ``base_version`` and a delta.

    Raises:
        DeltaError, IntegrityError, UnsafeArchiveError: the caller falls back to the
            full archive.
        StorageError: the disk refused.
    """
    from fleetup._delta import apply_delta  # delta codecs load only for a delta

    base_manifest, _ = store.load_manifest(base_version)
    base_dir = store.layout.release_dir(base_version)

    def build(dest: Path) -> TreeManifest:
        try:
            with patch.open("rb") as f:
                return apply_delta(f, base_dir, base_manifest, dest, max_size=facts.tree_size,
                                   max_entries=facts.tree_entries,
                                   max_depth=facts.depth_bound, on_progress=progress)
        except OSError as e:
            raise storage_error(e, f"read {patch}") from e

    _stage(store, facts, build)


def _stage(store: DeviceStore, facts: ReleaseFacts,
           build: Callable[[Path], TreeManifest]) -> None:
    if tree_is_staged(store, facts):
        return
    layout = store.layout
    partial = layout.partial_dir(facts.version)
    for stale in (layout.release_dir(facts.version), partial):
        try:
            remove_tree(stale)
        except OSError as e:
            raise storage_error(e, f"remove the stale {stale}") from e
    try:
        _install_partial(store, facts, build(partial))
    except OSError as e:
        discard_tree(partial)
        raise storage_error(e, f"install {facts.version}") from e
    except BaseException:
        discard_tree(partial)
        raise


def _install_partial(store: DeviceStore, facts: ReleaseFacts, manifest: TreeManifest) -> None:
    """Check the built ``.partial`` tree against the signed digest, make it durable, and
    rename it into place (the manifest is saved first: it marks the tree as complete).

    Raises:
        IntegrityError: the tree is not the signed tree.
        OSError: the disk refused.
    """
    if manifest.digest() != facts.tree_digest:
        raise IntegrityError(
            f"the unpacked tree of {facts.version} does not match its signed digest")
    layout = store.layout
    _flush()
    failpoints.hit("stage:unpacked")
    store.save_manifest(facts.version, manifest, facts)
    failpoints.hit("stage:manifest-saved")
    os.rename(layout.partial_dir(facts.version), layout.release_dir(facts.version))
    fsync_dir(layout.releases)


class StreamingUnpack:
    """Unpacks a release archive into ``releases/<v>.partial`` while it downloads.

    Given as the download's ``tee``: the fetcher hands it each chunk as it is written.
    A worker thread decompresses and unpacks through the same checks as always
    (``extract_archive``), overlapping the network with the disk. Nothing it builds is
    used until :meth:`accept` is called after python-tuf has verified the whole archive,
    and then only if the tree matches the signed digest; any gap in the bytes (a resumed
    or restarted download), any error, or a wrong tree abandons it, and the ordinary
    stage step unpacks the verified file instead.
    """

    _EOF = b""

    def __init__(self, store: DeviceStore, facts: ReleaseFacts) -> None:
        self.store = store
        self.facts = facts
        self.partial = store.layout.partial_dir(facts.version)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._expected = 0
        self._abandoned = False
        self._manifest: TreeManifest | None = None
        self.error: BaseException | None = None
        self._worker = threading.Thread(target=self._unpack, name="fleetup-unpack",
                                        daemon=True)
        # A stale tree that cannot go only costs the overlap: the stage step unpacks.
        if discard_tree(store.layout.release_dir(facts.version)) and \
                discard_tree(self.partial):
            self._worker.start()
        else:
            self._abandoned = True

    def __call__(self, offset: int, data: bytes) -> None:
        if self._abandoned:
            return
        if offset != self._expected:
            self._abandon()
            return
        self._expected += len(data)
        self._put(data)

    def _put(self, item: bytes | None) -> None:
        while self._worker.is_alive():  # a worker that died must not block the download
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        self._abandoned = True

    def _abandon(self) -> None:
        self._abandoned = True
        self._put(None)

    def _unpack(self) -> None:
        try:
            reader = cast("BinaryIO", _QueueReader(self._queue))
            manifest = extract_archive(reader, self.partial,
                                       max_size=self.facts.tree_size,
                                       max_entries=self.facts.tree_entries,
                                       max_depth=self.facts.depth_bound)
            # The tar ends before the archive does (end blocks, record padding, the
            # zstd epilogue): take the rest too, so the last chunks and the end of the
            # download find a live worker instead of abandoning a complete tree.
            while reader.read(_CHUNK):
                pass
            self._manifest = manifest
        except BaseException as e:  # noqa: BLE001 - reported through accept()
            self.error = e
            while True:  # drain, so the download never waits on a dead worker
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def accept(self) -> bool:
        """After python-tuf verified the archive: install the tree if it is complete and
        the signed one. Returns whether it did; the caller stages normally otherwise."""
        self._put(self._EOF)
        self._join()
        manifest = self._manifest
        try:
            if self._abandoned or manifest is None or \
                    manifest.digest() != self.facts.tree_digest:
                return False
            _install_partial(self.store, self.facts, manifest)
            return True
        except (OSError, IntegrityError):
            return False
        finally:
            discard_tree(self.partial)

    def discard(self) -> None:
        """The download failed: stop the worker and remove what it built."""
        self._abandon()
        self._join()
        discard_tree(self.partial)

    def _join(self) -> None:
        if self._worker.ident is not None:  # never started when a stale tree stayed
            self._worker.join()


class _QueueReader(io.RawIOBase):
    """A file-like view of the chunks a :class:`StreamingUnpack` receives."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buffer:
            if self._ended:
                return 0
            chunk = self._chunks.get()
            if chunk is None:
                raise ArchiveError("the download was abandoned")
            self._ended = not chunk
            self._buffer = memoryview(chunk)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _flush() -> None:
    # The tree must be on disk before it is renamed into place and used: a power cut
    # after the rename must not leave empty or torn files (delayed allocation).
    os.sync()
