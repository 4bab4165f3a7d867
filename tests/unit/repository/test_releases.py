"""Publishing, listing and yanking releases; checked through TUF's own client."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Targets

from fleetup._archive import extract_archive
from fleetup._delta import DELTA_FORMAT
from fleetup._facts import (
    HealthSpec,
    ReleaseFacts,
    index_target_path,
    parse_index,
    release_target_path,
)
from fleetup._manifest import scan_tree
from fleetup._versions import UpdateType
from fleetup.errors import ReleaseNotFoundError
from fleetup.repository import (
    FileRepository,
    RepoConfig,
    RepoLayout,
    list_releases,
    releases_of,
    target_file_name,
    yank_release,
)
from tests.unit.repository.conftest import PLATFORM, Publish, make_client


def current_targets(repo: Path) -> Targets:
    return FileRepository(RepoLayout(repo), RepoConfig()).targets()


def test_release_is_signed_with_its_facts_and_verifies_for_a_client(
        repo: Path, publish: Publish, tmp_path: Path) -> None:
    added = publish("1.0.0", notes="first", channels=("stable", "beta", "stable"),
                    health=HealthSpec(("bin/health",), None, 5))
    facts = added.facts
    assert (facts.app, facts.version, facts.platform) == ("hello", "1.0.0", PLATFORM)
    assert facts.channels == ("stable", "beta")
    assert facts.update_type is UpdateType.MAJOR
    assert facts.notes == "first"
    assert facts.health == HealthSpec(("bin/health",), None, 5)
    src = tmp_path / "sources" / f"hello-{PLATFORM}-1.0.0"
    manifest = scan_tree(src)
    assert (facts.tree_digest, facts.tree_size, facts.tree_entries) == (
        manifest.digest(), manifest.size, len(manifest.entries))

    target = current_targets(repo).targets[facts.target_path]
    assert target.custom == facts.to_custom()
    assert ReleaseFacts.from_custom(target.custom, target.path) == facts
    stored = target_file_name(RepoLayout(repo), target)
    data = stored.read_bytes()
    assert stored.name == f"{hashlib.sha256(data).hexdigest()}.hello-1.0.0.tar.zst"
    assert added.archive_size == len(data) == target.length

    client = make_client(repo, tmp_path)
    client.refresh()
    info = client.get_targetinfo(facts.target_path)
    assert info is not None
    assert info.custom == facts.to_custom()
    path = client.download_target(info)
    unpacked = extract_archive(io.BytesIO(Path(path).read_bytes()), tmp_path / "installed",
                               max_size=facts.tree_size, max_entries=facts.tree_entries)
    assert unpacked.digest() == facts.tree_digest

    index = client.get_targetinfo(index_target_path("hello", PLATFORM))
    assert index is not None
    assert parse_index(Path(client.download_target(index)).read_bytes()) == [facts.target_path]


def test_versions_are_ordered_by_pep440_and_types_derived(repo: Path, publish: Publish) -> None:
    sequence = [("1.9.0", UpdateType.MAJOR), ("1.10.0", UpdateType.MINOR),
                ("1.10.1", UpdateType.PATCH), ("2.0.0", UpdateType.MAJOR),
                ("1.10.2", UpdateType.PATCH),          # a backport: compared with 1.10.1
                ("2.0.0.post1", UpdateType.PATCH)]
    for version, expected in sequence:
        assert publish(version, payload_size=256).facts.update_type is expected, version
    rows = list_releases(repo)
    assert [f.version for f, _, _ in rows] == [
        "1.9.0", "1.10.0", "1.10.1", "1.10.2", "2.0.0", "2.0.0.post1"]


def test_explicit_type_wins_and_versions_are_normalized(repo: Path, publish: Publish) -> None:
    publish("1.0")
    added = publish("v1.1.0-rc1", update_type=UpdateType.SECURITY)
    assert added.facts.update_type is UpdateType.SECURITY
    assert added.facts.version == "1.1.0rc1"
    assert added.facts.target_path == release_target_path("hello", PLATFORM, "1.1.0rc1")


def test_deltas_from_the_newest_older_releases(repo: Path, publish: Publish) -> None:
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        added = publish(version)
    assert sorted(added.deltas) == ["1.0.0", "1.1.0", "1.2.0"][-RepoConfig().delta_count:]
    assert all(size < added.archive_size for size in added.deltas.values())
    late = publish("1.1.5")                 # only older versions are delta sources
    assert sorted(late.deltas) == ["1.0.0", "1.1.0"]
    rows = {f.version: (size, deltas) for f, size, deltas in list_releases(repo)}
    assert rows["1.3.0"][1] == ["1.0.0", "1.1.0", "1.2.0"]
    assert rows["1.1.5"][1] == ["1.0.0", "1.1.0"]
    assert rows["1.0.0"][1] == []
    targets = current_targets(repo).targets
    delta = targets[f"hello/{PLATFORM}/deltas/hello-1.2.0_to_1.3.0.fdelta"]
    assert delta.custom["fleetup"] == {
        "kind": "delta", "app": "hello", "platform": PLATFORM, "from": "1.2.0", "to": "1.3.0",
        "release": release_target_path("hello", PLATFORM, "1.3.0"),
        "method": DELTA_FORMAT}
    assert delta.length == added.deltas["1.2.0"]


def test_index_lists_every_release_of_the_app_and_platform(repo: Path, publish: Publish,
                                                           tmp_path: Path) -> None:
    publish("1.0.0")
    publish("1.0.0", platform="linux-aarch64")
    publish("2.0.0")
    publish("0.1", app="other")
    client = make_client(repo, tmp_path)
    client.refresh()

    def index(app: str, platform: str) -> list[str]:
        info = client.get_targetinfo(index_target_path(app, platform))
        assert info is not None
        return parse_index(Path(client.download_target(info)).read_bytes())

    assert index("hello", PLATFORM) == [release_target_path("hello", PLATFORM, v)
                                        for v in ("1.0.0", "2.0.0")]
    assert index("hello", "linux-aarch64") == [
        release_target_path("hello", "linux-aarch64", "1.0.0")]
    assert index("other", PLATFORM) == [release_target_path("other", PLATFORM, "0.1")]
    assert len(releases_of(current_targets(repo))) == 4


def test_rollout_and_min_from_are_signed(repo: Path, publish: Publish) -> None:
    added = publish("1.0.0", rollout="10,100@1d", min_from="0.9")
    assert added.facts.rollout is not None
    assert added.facts.rollout.steps[-1][1] == 100.0
    assert added.facts.min_from == "0.9"
    target = current_targets(repo).targets[added.facts.target_path]
    assert ReleaseFacts.from_custom(target.custom).rollout == added.facts.rollout


def test_yank_marks_only_that_version_and_clients_see_it(repo: Path, publish: Publish,
                                                         tmp_path: Path) -> None:
    publish("1.0.0")
    publish("1.1.0")
    publish("1.1.0", platform="linux-aarch64")
    yanked = yank_release(repo, app="hello", version="1.1", reason="boot loop",
                          platform=PLATFORM)
    assert [(f.version, f.platform, f.yanked) for f in yanked] == [("1.1.0", PLATFORM, True)]
    rows = {(f.version, f.platform): f for f, _, _ in list_releases(repo)}
    assert rows[("1.1.0", PLATFORM)].yank_reason == "boot loop"
    assert not rows[("1.0.0", PLATFORM)].yanked
    assert not rows[("1.1.0", "linux-aarch64")].yanked

    client = make_client(repo, tmp_path)
    client.refresh()
    info = client.get_targetinfo(release_target_path("hello", PLATFORM, "1.1.0"))
    assert info is not None
    assert info.custom["fleetup"]["yanked"] is True
    assert info.custom["fleetup"]["yank_reason"] == "boot loop"
    client.download_target(info)   # still downloadable and verified: yanking is not deleting

    everywhere = yank_release(repo, app="hello", version="1.1.0")
    assert {f.platform for f in everywhere} == {PLATFORM, "linux-aarch64"}
    assert all(f.yank_reason == "yanked by the publisher" for f in everywhere)


def test_yank_of_an_unknown_release(repo: Path, publish: Publish) -> None:
    publish("1.0.0")
    with pytest.raises(ReleaseNotFoundError, match=r"no release hello 2\.0"):
        yank_release(repo, app="hello", version="2.0")
    with pytest.raises(ReleaseNotFoundError, match="for linux-riscv64"):
        yank_release(repo, app="hello", version="1.0.0", platform="linux-riscv64")


def test_each_publish_is_one_new_snapshot_and_timestamp(repo: Path, publish: Publish) -> None:
    def version(name: str) -> int:
        return Metadata.from_file(str(repo / "public/metadata" / name)).signed.version

    publish("1.0.0")
    assert version("timestamp.json") == 2
    publish("1.0.1")
    assert version("timestamp.json") == 3
    assert (repo / "public/metadata/3.snapshot.json").is_file()
    assert (repo / "public/metadata/3.targets.json").is_file()
    assert not (repo / "public/metadata/4.targets.json").exists()
    assert not (repo / ".staging").exists()


def test_list_of_an_empty_repository(repo: Path) -> None:
    assert list_releases(repo) == []
