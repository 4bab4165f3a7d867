"""Building release trees on the device, and removing the ones no longer kept.

A tree is built in ``releases/<v>.partial`` (from the archive, or from a kept tree and
a delta), checked against the signed tree digest, flushed to disk, its manifest saved,
then renamed to ``releases/<v>`` in one step. Running any function here twice does no
harm: a complete, verified tree is left alone, a stale ``.partial`` is removed first.
"""

from __future__ import annotations

import contextlib
import logging
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
from fleetup.agent._store import DeviceStore
from fleetup.errors import FleetupError, IntegrityError, StorageError

__all__ = ["clear_downloads", "discard_partials", "prune_releases", "remove_release",
           "stage_archive", "stage_delta", "tree_is_staged"]

log = logging.getLogger("fleetup.agent")

Progress = Callable[[int], None]


def tree_is_staged(store: DeviceStore, facts: ReleaseFacts) -> bool:
    """Whether ``releases/<v>`` is complete and was verified against these facts."""
    if not store.layout.release_dir(facts.version).is_dir():
        return False
    try:
        manifest, _ = store.load_manifest(facts.version)
    except FleetupError:
        return False
    return manifest.digest() == facts.tree_digest


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


def discard_partials(store: DeviceStore) -> None:
    """Remove ``releases/*.partial`` left by an interrupted staging."""
    try:
        partials = list(store.layout.releases.glob("*.partial"))
    except OSError:
        return
    for path in partials:
        with contextlib.suppress(OSError, StorageError):
            remove_tree(path)


def remove_release(store: DeviceStore, version: str) -> None:
    """Remove a kept release tree (never the one ``current`` points to)."""
    if store.installed_version() == version:
        return
    store.forget_manifest(version)
    remove_tree(store.layout.release_dir(version))


def prune_releases(store: DeviceStore, keep: int) -> list[str]:
    """Keep ``current`` and the newest other releases, ``keep`` in all; remove the rest.

    Returns the versions removed.
    """
    installed = store.installed_version()
    others = [v for v in store.kept_versions() if v != installed]
    budget = max(0, keep - (1 if installed else 0))
    doomed = others[:-budget] if budget else others
    for version in doomed:
        remove_release(store, version)
        log.info("removed kept release %s (keep = %d)", version, keep)
    return doomed


def clear_downloads(store: DeviceStore, keep_partial: bool = False) -> None:
    """Remove downloaded artifacts; partial downloads stay when ``keep_partial``."""
    try:
        files = list(store.layout.downloads.iterdir())
    except OSError:
        return
    for path in files:
        if keep_partial and path.name.endswith(".part"):
            continue
        with contextlib.suppress(OSError, StorageError):
            remove_tree(path)
