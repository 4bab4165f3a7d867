"""Kept release trees on the device: is one staged, which go, what is left over.

Building trees lives in ``_stage`` (it needs the archive and delta code); this module
stays light for a resting daemon. Running any function here twice does no harm.

Clean-ups never raise: a tree that cannot be removed now is logged and left for the
next try, so a clean-up can never wedge the update journal (a device locked out of
updates by a leftover it cannot delete).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from fleetup._facts import ReleaseFacts
from fleetup._treewriter import remove_tree
from fleetup.agent._retention import (
    ages_from_history,
    previous_from_history,
    releases_to_prune,
)
from fleetup.agent._store import DeviceStore
from fleetup.errors import FleetupError

__all__ = ["clear_downloads", "discard_partials", "discard_tree", "prune_releases",
           "remove_release", "tree_is_staged"]

log = logging.getLogger("fleetup.agent")


def tree_is_staged(store: DeviceStore, facts: ReleaseFacts) -> bool:
    """Whether ``releases/<v>`` is complete and was verified against these facts."""
    if not store.layout.release_dir(facts.version).is_dir():
        return False
    try:
        manifest, _ = store.load_manifest(facts.version)
    except FleetupError:
        return False
    return manifest.digest() == facts.tree_digest


def discard_tree(path: Path) -> bool:
    """Remove ``path`` (a tree, file or link) if it can be; returns whether it is gone.

    Never raises: whatever goes wrong is logged, and the caller's step moves on.
    """
    try:
        remove_tree(path)
        return True
    except Exception as e:  # noqa: BLE001 - a clean-up must not stop the lifecycle
        log.error("could not remove %s (left for the next try): %s: %s", path,
                  type(e).__name__, e)
        return False


def discard_partials(store: DeviceStore) -> None:
    """Remove ``releases/*.partial`` left by an interrupted staging."""
    try:
        partials = list(store.layout.releases.glob("*.partial"))
    except OSError:
        return
    for path in partials:
        discard_tree(path)


def remove_release(store: DeviceStore, version: str) -> None:
    """Remove a kept release tree (never the one ``current`` points to)."""
    if store.installed_version() == version:
        return
    store.forget_manifest(version)
    discard_tree(store.layout.release_dir(version))


def prune_releases(store: DeviceStore, keep: int, keep_days: float | None = None,
                   now: datetime | None = None) -> list[str]:
    """Keep ``current`` and the newest other releases, ``keep`` in all, and (with
    ``keep_days``) none that stopped being current longer ago than that, except the
    release before the current one (see ``_retention``). Removes the rest.

    Returns the versions removed.
    """
    installed = store.installed_version()
    kept = store.kept_versions()
    history = store.history() if keep_days is not None else []
    ages = ages_from_history(history, now or datetime.now(UTC))
    doomed = releases_to_prune(kept, current=installed, keep=keep, keep_days=keep_days,
                               previous=_previous(history, installed, kept), ages=ages)
    for version in doomed:
        remove_release(store, version)
        age = f", {ages[version]:.1f} days since it ran" if version in ages else ""
        log.info("removed kept release %s (keep = %d, keep_days = %s%s)", version, keep,
                 "off" if keep_days is None else f"{keep_days:g}", age)
    return doomed


def _previous(history: list[dict[str, object]], installed: str | None,
              kept: list[str]) -> str | None:
    """The release before the current one: from the history, else the newest older kept
    tree (what ``rollback`` would go back to)."""
    previous = previous_from_history(history, installed)
    if previous is not None or installed is None:
        return previous
    older = kept[:kept.index(installed)] if installed in kept else []  # kept: oldest first
    return older[-1] if older else None


def clear_downloads(store: DeviceStore, keep_partial: bool = False) -> None:
    """Remove downloaded artifacts; partial downloads stay when ``keep_partial``."""
    try:
        files = list(store.layout.downloads.iterdir())
    except OSError:
        return
    for path in files:
        if keep_partial and path.name.endswith(".part"):
            continue
        discard_tree(path)
