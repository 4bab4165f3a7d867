"""The repository layout: REPO/public is served, the first layout is refused and migrated."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetup.errors import RepositoryError
from fleetup.repository import (
    RepoLayout,
    init_repo,
    list_releases,
    migrate_layout,
    open_repository,
    refresh_repo,
)
from fleetup.repository._serve import public_server
from fleetup.server._store import store_layout
from tests.unit.repository.conftest import Publish


def old_layout(repo: Path) -> Path:
    """Turn a repository into the first layout: metadata/ and targets/ beside keys/."""
    for name in ("metadata", "targets"):
        os.rename(repo / "public" / name, repo / name)
    (repo / "public").rmdir()
    return repo


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_everything_devices_read_is_under_public(repo: Path, publish: Publish) -> None:
    publish("1.0.0", payload_size=100)
    layout = RepoLayout(repo)
    assert layout.public == repo / "public"
    assert sorted(p.name for p in layout.public.iterdir()) == ["metadata", "targets"]
    assert sorted(p.name for p in repo.iterdir()) == ["fleetup-repo.json", "keys", "public"]


def test_the_server_store_is_served_as_it_is(tmp_path: Path) -> None:
    layout = store_layout(tmp_path)
    assert layout.metadata == tmp_path / "repo" / "metadata"
    assert not layout.is_old_layout()


@pytest.mark.parametrize("operation", [
    lambda repo: open_repository(repo, [], None),
    lambda repo: list_releases(repo),
    lambda repo: refresh_repo(repo),
    lambda repo: public_server(repo, 0),
])
def test_the_old_layout_is_refused_with_the_command_that_converts_it(
        repo: Path, operation: Callable[[Path], object]) -> None:
    old_layout(repo)
    before = files(repo)
    with pytest.raises(RepositoryError) as caught:
        operation(repo)
    assert str(caught.value) == (f"{repo} has the old layout, in which serving it serves its "
                                 f"private keys: convert it with `fleetup repo migrate {repo}`")
    assert files(repo) == before


def test_migrate_moves_everything_and_then_the_repository_works(repo: Path,
                                                                publish: Publish) -> None:
    publish("1.0.0", payload_size=100)
    expected = files(repo)
    old_layout(repo)
    assert migrate_layout(repo) == ["targets", "metadata"]
    assert files(repo) == expected  # nothing lost, nothing changed, nothing left above
    assert sorted(p.name for p in repo.iterdir()) == ["fleetup-repo.json", "keys", "public"]
    publish("1.1.0", payload_size=100)
    assert [f.version for f, _, _ in list_releases(repo)] == ["1.0.0", "1.1.0"]


def test_migrate_again_does_nothing(repo: Path) -> None:
    before = files(repo)
    assert migrate_layout(repo) == []
    assert files(repo) == before


def test_migrate_killed_half_way_is_finished_by_running_it_again(repo: Path) -> None:
    expected = files(repo)
    old_layout(repo)
    (repo / "public").mkdir()
    os.rename(repo / "targets", repo / "public" / "targets")  # killed before metadata/
    assert RepoLayout(repo).is_old_layout()
    assert migrate_layout(repo) == ["metadata"]
    assert files(repo) == expected


@pytest.mark.parametrize("stranger", ["notes.txt", "metadata"])
def test_migrate_refuses_a_public_folder_in_the_way_and_moves_nothing(
        repo: Path, stranger: str) -> None:
    old_layout(repo)
    (repo / "public").mkdir()
    (repo / "public" / stranger).write_text("?")
    before = files(repo)
    with pytest.raises(RepositoryError, match=f"already holds {stranger}: move it away"):
        migrate_layout(repo)
    assert files(repo) == before


def test_migrate_refuses_what_is_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a fleetup repository"):
        migrate_layout(tmp_path)


def test_init_writes_no_key_under_public(tmp_path: Path) -> None:
    layout = init_repo(tmp_path / "repo")
    assert not [p for p in layout.public.rglob("*") if p.suffix == ".key"]
    assert all(p.parent == layout.keys for p in (tmp_path / "repo").rglob("*.key"))
