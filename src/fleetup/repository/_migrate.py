"""The first repository layout, refused and converted.

The first layout kept ``metadata/`` and ``targets/`` at ``REPO/`` beside ``keys/``, and
the README said to serve ``REPO``: any static server then answered ``/keys/root.key``.
A publisher command never works on such a repository (the keys may be served right
now); it names the one command that converts it, :func:`migrate_layout`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from fleetup._atomic import fsync_dir, storage_error
from fleetup.errors import RepositoryError
from fleetup.repository._store import RepoLayout, repo_lock

__all__ = ["check_layout", "migrate_layout"]

# metadata/ moves last: until it has moved the repository still reads as the old layout,
# so a migration killed half-way is simply run again.
_MOVED = ("targets", "metadata")


def migrate_command(root: Path) -> str:
    return f"fleetup repo migrate {shlex.quote(str(root))}"


def check_layout(layout: RepoLayout) -> None:
    """Raises RepositoryError for a repository in the first layout, naming the fix."""
    if layout.is_old_layout():
        raise RepositoryError(
            f"{layout.root} has the old layout, in which serving it serves its private "
            f"keys: convert it with `{migrate_command(layout.root)}`")


def migrate_layout(path: Path) -> list[str]:
    """Move ``REPO/metadata`` and ``REPO/targets`` to ``REPO/public/``; returns what moved.

    Each move is one rename (nothing is copied, so nothing is lost or half-written), and
    running it again after a crash, or on a converted repository, finishes the job or
    does nothing.

    Raises:
        RepositoryError: not a fleetup repository, or ``public/`` already holds something
            in the way (nothing is moved then).
        StorageError: a rename failed; what already moved stays moved.
    """
    layout = RepoLayout(path)
    if not layout.config.is_file():
        raise RepositoryError(f"not a fleetup repository (no {layout.config.name}): {path}")
    with repo_lock(layout):
        pending = [name for name in _MOVED if (path / name).exists()]
        _check_room(layout, pending)
        try:
            layout.public.mkdir(exist_ok=True)
            for name in pending:
                os.rename(path / name, layout.public / name)
                fsync_dir(layout.public)
                fsync_dir(path)
        except OSError as e:
            raise storage_error(e, f"move the served files of {path} under public/") from e
        return pending


def _check_room(layout: RepoLayout, pending: list[str]) -> None:
    """Refuse before moving anything if ``public/`` has anything a device should not read
    or anything a move would land on."""
    if not layout.public.exists():
        return
    if not layout.public.is_dir():
        raise RepositoryError(f"{layout.public} is not a folder: move it away first")
    strangers = sorted(p.name for p in layout.public.iterdir() if p.name not in _MOVED)
    clashes = sorted(name for name in pending if (layout.public / name).exists())
    if strangers or clashes:
        what = ", ".join(strangers + clashes)
        raise RepositoryError(f"{layout.public} already holds {what}: move it away first, "
                              f"then run `{migrate_command(layout.root)}` again")
