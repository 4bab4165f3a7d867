"""Repairing a damaged installed tree in place, one file at a time.

``verify --repair`` re-downloads the release (verified by TUF), unpacks it beside the
damaged tree, checks it against the signed digest, then replaces each damaged, missing
or extra entry with an atomic rename. The tree is never missing as a whole, so a
running app keeps its ``current`` while it is mended.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fleetup._archive import extract_archive
from fleetup._atomic import fsync_dir, storage_error
from fleetup._facts import ReleaseFacts
from fleetup._manifest import EntryType, TreeManifest, scan_tree
from fleetup._treewriter import remove_tree
from fleetup.agent._store import DeviceStore
from fleetup.errors import FleetupError, IntegrityError

__all__ = ["repair_tree"]


def repair_tree(store: DeviceStore, facts: ReleaseFacts, archive: Path) -> None:
    """Make ``releases/<v>`` equal to the signed tree again.

    Raises:
        IntegrityError: the downloaded archive or the repaired tree does not match.
        UnsafeArchiveError, ArchiveError: the archive is hostile or corrupt.
        StorageError: the disk refused.
    """
    layout = store.layout
    target = layout.release_dir(facts.version)
    fresh = layout.releases / f"{facts.version}.repair.partial"
    remove_tree(fresh)
    try:
        with archive.open("rb") as f:
            good = extract_archive(f, fresh, max_size=facts.tree_size,
                                   max_entries=facts.tree_entries,
                                   max_depth=facts.depth_bound)
        if good.digest() != facts.tree_digest:
            raise IntegrityError(f"the downloaded {facts.version} does not match its signed digest")
        _mend(target, fresh, good)
        if scan_tree(target).digest() != facts.tree_digest:
            raise IntegrityError(f"{facts.version} still differs after repair")
        store.save_manifest(facts.version, good, facts)
    except OSError as e:
        raise storage_error(e, f"repair {target}") from e
    finally:
        with contextlib.suppress(OSError, FleetupError):
            remove_tree(fresh)


def _mend(target: Path, fresh: Path, good: TreeManifest) -> None:
    try:
        actual = scan_tree(target).by_path()
    except FleetupError:  # e.g. a link leading out of the tree: replace every entry
        actual = {}
    wanted = good.by_path()
    # Extra entries first, deepest first, so a file standing where a dir belongs goes.
    # They are listed from the directory itself: ``actual`` may be empty.
    for path in sorted(_present(target) - set(wanted), key=lambda p: p.count("/"),
                       reverse=True):
        remove_tree(target / path)
    for entry in good.entries:  # parents before children
        if actual.get(entry.path) == entry:
            continue
        dest, source = target / entry.path, fresh / entry.path
        if entry.type is EntryType.DIR:
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                remove_tree(dest)
            dest.mkdir(exist_ok=True)
            dest.chmod(entry.mode)
            continue
        if dest.is_dir() and not dest.is_symlink():
            remove_tree(dest)
        os.replace(source, dest)
        fsync_dir(dest.parent)


def _present(target: Path) -> set[str]:
    """Every path under ``target``, relative; symlinks are listed, never followed."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(target):
        base = Path(dirpath).relative_to(target)
        found.update((base / name).as_posix() for name in dirnames + filenames)
    return found
