"""Building a release tree on the device: from the archive, or from a kept tree and a delta.

A tree is built in ``releases/<v>.partial``, checked against the signed tree digest,
flushed to disk, its manifest saved, then renamed to ``releases/<v>`` in one step.
Running it twice does no harm: a complete, verified tree is left alone, a stale
``.partial`` is removed first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from fleetup import _failpoints as failpoints
from fleetup._archive import extract_archive
from fleetup._atomic import fsync_dir, storage_error
from fleetup._delta import apply_delta
from fleetup._facts import ReleaseFacts
from fleetup._manifest import TreeManifest
from fleetup._treewriter import remove_tree
from fleetup.agent._install import tree_is_staged
from fleetup.agent._store import DeviceStore
from fleetup.errors import IntegrityError, StorageError

__all__ = ["stage_archive", "stage_delta"]

Progress = Callable[[int], None]


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
                                       max_entries=facts.tree_entries, on_progress=progress)
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
    base_manifest, _ = store.load_manifest(base_version)
    base_dir = store.layout.release_dir(base_version)

    def build(dest: Path) -> TreeManifest:
        try:
            with patch.open("rb") as f:
                return apply_delta(f, base_dir, base_manifest, dest, max_size=facts.tree_size,
                                   max_entries=facts.tree_entries, on_progress=progress)
        except OSError as e:
            raise storage_error(e, f"read {patch}") from e

    _stage(store, facts, build)


def _stage(store: DeviceStore, facts: ReleaseFacts,
           build: Callable[[Path], TreeManifest]) -> None:
    if tree_is_staged(store, facts):
        return
    layout = store.layout
    dest, partial = layout.release_dir(facts.version), layout.partial_dir(facts.version)
    remove_tree(dest)
    remove_tree(partial)
    try:
        manifest = build(partial)
        if manifest.digest() != facts.tree_digest:
            raise IntegrityError(
                f"the unpacked tree of {facts.version} does not match its signed digest")
        _flush()
        failpoints.hit("stage:unpacked")
        store.save_manifest(facts.version, manifest, facts)
        failpoints.hit("stage:manifest-saved")
        os.rename(partial, dest)
        fsync_dir(layout.releases)
    except OSError as e:
        remove_tree(partial)
        raise storage_error(e, f"install {facts.version}") from e
    except BaseException:
        with contextlib.suppress(OSError, StorageError):
            remove_tree(partial)
        raise


def _flush() -> None:
    # The tree must be on disk before it is renamed into place and used: a power cut
    # after the rename must not leave empty or torn files (delayed allocation).
    os.sync()
