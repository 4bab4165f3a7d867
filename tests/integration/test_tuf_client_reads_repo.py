"""An unmodified python-tuf client reads what ``fleetup`` publishes, over real HTTP.

The repository is built only with the ``fleetup`` command (real subprocesses) and served
by a real static HTTP server (uvicorn + Starlette in its own process). The client is
``tuf.ngclient.Updater`` with its default fetcher, given nothing but
``metadata/1.root.json`` and the two base URLs. After every publisher operation — new
releases with deltas, each key rotation, a yank — it must refresh and verify every
target the repository lists.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.ngclient import Updater

from fleetup._archive import extract_archive
from fleetup._delta import apply_delta
from fleetup._facts import DeltaFacts, ReleaseFacts, index_target_path, parse_index
from tests.support.http import StaticServer, serve_directory
from tests.support.trees import sample_app

FLEETUP = str(Path(sys.executable).with_name("fleetup"))
APP, PLATFORM = "hello", "linux-x86_64"


def fleetup(*args: str | Path) -> Any:
    """Run the real CLI; fail the test with its stderr if it fails; return its JSON."""
    done = subprocess.run([FLEETUP, *map(str, args), "--json"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def published_targets(repo: Path) -> dict[str, Any]:
    """The target list of the newest committed targets metadata, read from disk."""
    timestamp = json.loads((repo / "public/metadata/timestamp.json").read_bytes())["signed"]
    snapshot_version = timestamp["meta"]["snapshot.json"]["version"]
    snapshot = json.loads((repo / f"public/metadata/{snapshot_version}.snapshot.json").read_bytes())
    targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
    body = json.loads((repo / f"public/metadata/{targets_version}.targets.json").read_bytes())
    targets: dict[str, Any] = body["signed"]["targets"]
    return targets


def verify_everything(client: Updater, repo: Path) -> dict[str, str]:
    """Refresh, then download and verify every published target; returns name -> path."""
    client.refresh()
    names = published_targets(repo)
    assert names, "the repository lists no targets"
    paths = {}
    for name, expected in names.items():
        info = client.get_targetinfo(name)
        assert info is not None, f"the client cannot see {name}"
        assert info.length == expected["length"]
        assert info.custom == expected.get("custom")
        paths[name] = client.download_target(info, filepath=None)
        assert client.find_cached_target(info) is not None
    index = client.get_targetinfo(index_target_path(APP, PLATFORM))
    assert index is not None
    listed = parse_index(Path(paths[index.path]).read_bytes())
    assert sorted(listed) == sorted(n for n in names if n.endswith(".tar.zst"))
    return paths


@dataclass
class World:
    """A repository built by ``fleetup`` and the real HTTP server serving it."""

    work: Path
    repo: Path
    server: StaticServer
    trusted_root: bytes          # metadata/1.root.json, as shipped to devices

    def client(self, name: str, *, bootstrap: bool = True) -> Updater:
        """An Updater keeping its state in ``work/name``; ``bootstrap=False`` starts from
        what that client already trusts instead of root v1."""
        meta, downloads = self.work / name / "metadata", self.work / name / "downloads"
        meta.mkdir(parents=True, exist_ok=True)
        downloads.mkdir(parents=True, exist_ok=True)
        return Updater(str(meta), f"{self.server.url}metadata/", str(downloads),
                       f"{self.server.url}targets/",
                       bootstrap=self.trusted_root if bootstrap else None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("tuf-interop")
    repo = work / "repo"
    fleetup("repo", "init", repo)
    trusted_root = (repo / "public/metadata/1.root.json").read_bytes()
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        tree = sample_app(work / "src" / version, version)
        fleetup("release", "add", tree, "--repo", repo, "--app", APP, "--version", version,
                "--platform", PLATFORM)
    with serve_directory(repo / "public", work) as server:
        yield World(work, repo, server, trusted_root)


def test_a_client_with_only_root_v1_verifies_every_release_delta_and_index(world: World) -> None:
    paths = verify_everything(world.client("c1"), world.repo)
    kinds = sorted(name.rsplit(".", 1)[-1] for name in paths)
    assert kinds == ["fdelta"] * 3 + ["json"] + ["zst"] * 3


def test_a_delta_from_the_client_rebuilds_the_signed_tree(world: World) -> None:
    work = world.work
    client = world.client("c2")
    client.refresh()

    def fetch(name: str) -> tuple[dict[str, Any], bytes]:
        info = client.get_targetinfo(name)
        assert info is not None
        return info.custom, Path(client.download_target(info)).read_bytes()

    old_custom, old_archive = fetch(f"{APP}/{PLATFORM}/{APP}-1.0.0.tar.zst")
    new_custom, _ = fetch(f"{APP}/{PLATFORM}/{APP}-1.2.0.tar.zst")
    delta_custom, patch = fetch(f"{APP}/{PLATFORM}/deltas/{APP}-1.0.0_to_1.2.0.fdelta")
    old, new = ReleaseFacts.from_custom(old_custom), ReleaseFacts.from_custom(new_custom)
    delta = DeltaFacts.from_custom(delta_custom)
    assert (delta.from_version, delta.to_version, delta.release_target) == (
        "1.0.0", "1.2.0", new.target_path)
    assert len(patch) < len(old_archive) / 5

    old_tree = work / "installed-1.0.0"
    old_manifest = extract_archive(io.BytesIO(old_archive), old_tree,
                                   max_size=old.tree_size, max_entries=old.tree_entries)
    assert old_manifest.digest() == old.tree_digest
    rebuilt = apply_delta(io.BytesIO(patch), old_tree, old_manifest, work / "rebuilt-1.2.0",
                          max_size=new.tree_size, max_entries=new.tree_entries)
    assert rebuilt.digest() == new.tree_digest


@pytest.mark.slow
def test_rotations_of_every_key_and_a_yank_keep_old_clients_updating(world: World) -> None:
    repo = world.repo
    verify_everything(world.client("steady"), repo)   # this client keeps its state

    for n, role in enumerate(("root", "targets", "snapshot", "timestamp"), start=2):
        rotated = fleetup("keys", "rotate", "--repo", repo, role)
        root = json.loads((repo / f"public/metadata/{n}.root.json").read_bytes())["signed"]
        assert root["roles"][role]["keyids"] == [rotated["keyid"]]
        verify_everything(world.client(f"fresh-{role}"), repo)      # from root v1
        verify_everything(world.client("steady", bootstrap=False), repo)
        steady_root = (world.work / "steady/metadata/root.json").read_bytes()
        assert json.loads(steady_root)["signed"]["version"] == n

    tree = sample_app(world.work / "src" / "1.3.0", "1.3.0")
    fleetup("release", "add", tree, "--repo", repo, "--app", APP, "--version", "1.3.0",
            "--platform", PLATFORM)
    fleetup("release", "yank", "--repo", repo, "--app", APP, "--version", "1.1.0",
            "--reason", "boot loop")
    fleetup("repo", "refresh", "--repo", repo)
    verify_everything(world.client("steady", bootstrap=False), repo)

    client = world.client("after-yank")
    verify_everything(client, repo)
    for version, yanked in [("1.0.0", False), ("1.1.0", True), ("1.3.0", False)]:
        info = client.get_targetinfo(f"{APP}/{PLATFORM}/{APP}-{version}.tar.zst")
        assert info is not None
        facts = ReleaseFacts.from_custom(info.custom)
        assert facts.yanked is yanked
        assert facts.yank_reason == ("boot loop" if yanked else "")


def test_the_client_refuses_an_artifact_changed_on_the_server(world: World) -> None:
    # The other tests would pass against a client that checks nothing: this one would not.
    client = world.client("tamper")
    client.refresh()
    info = client.get_targetinfo(f"{APP}/{PLATFORM}/{APP}-1.0.0.tar.zst")
    assert info is not None
    stored = next((world.repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-1.0.0.tar.zst"))
    original = stored.read_bytes()
    try:
        stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(LengthOrHashMismatchError):
            client.download_target(info)
    finally:
        stored.write_bytes(original)
