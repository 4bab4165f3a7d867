"""Attacks on the publisher's repository as it is served (issue 12 §1, §7).

What devices read is the folder whose ``metadata/`` holds the root of trust that
``repo init`` tells the publisher to ship; these rows find it the same way
(:func:`served_root`), serve it as any static host would, and attack that.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from tuf.api.metadata import Metadata, Snapshot, Timestamp

from fleetup._facts import ReleaseFacts
from fleetup.cli import main
from fleetup.errors import HTTPStatusError, RollbackAttackError
from fleetup.repository import RepoLayout, init_repo
from tests.security._table import ATTACKERS, Attack, attack, rows, run_row
from tests.support.online_keys import resign_online
from tests.support.releases import APP, PLATFORM, SampleRepo

assert "publisher-fs" in ATTACKERS
ATTACKS: list[Attack] = []


def served_root(repo: Path) -> Path:
    """The folder a publisher serves: the one above the shipped root's ``metadata/``."""
    return init_repo(repo).metadata.parent


def fleetup(*args: object) -> int:
    return main([str(a) for a in args])


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_host(directory: Path) -> Iterator[str]:
    """``python3 -m http.server`` in ``directory``, as the issue served it; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side ``..`` clean-up)."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def private_material(keys: Path) -> set[bytes]:
    """Every form a private key in ``keys`` could be leaked in: the file, its base64 body
    lines, the raw 32-byte seed and its hex."""
    found: set[bytes] = set()
    for key_file in keys.iterdir():
        pem = key_file.read_bytes()
        found.add(pem)
        found.update(line for line in pem.splitlines() if len(line) > 40)
        private = load_pem_private_key(pem, None)
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        found.update({raw, raw.hex().encode()})
    return found


def assert_no_key_served(served: Path, material: set[bytes]) -> None:
    files = [p for p in served.rglob("*") if p.is_file()]
    assert files, f"nothing is served from {served}"
    for path in files:
        assert path.suffix != ".key", path
        assert "keys" not in path.relative_to(served).parts, path
        data = path.read_bytes()
        assert not any(secret in data for secret in material), f"{path} holds a private key"


@attack(ATTACKS, "repository.serve-as-documented-exposes-keys", attacker="publisher-fs",
        refusal="serving the documented folder answers 404 for /keys/*.key")
def _served_repo_exposes_keys(tmp_path: Path) -> None:
    served = served_root(tmp_path / "repo")
    with static_host(served) as url:
        assert get(url, "/metadata/1.root.json")[0] == 200
        for role in ("root", "targets", "snapshot", "timestamp"):
            status, body = get(url, f"/keys/{role}.key")
            assert status == 404, f"/keys/{role}.key answered {status}"
            assert b"PRIVATE KEY" not in body


@attack(ATTACKS, "repository.public-tree-holds-no-key", attacker="publisher-fs",
        refusal="no file under the served tree is, names or contains a private key, "
                "after init, add, rotate, refresh and yank")
def _public_tree_holds_no_key(tmp_path: Path) -> None:
    repo = SampleRepo.create(tmp_path)
    public, keys = RepoLayout(repo.path).metadata.parent, repo.path / "keys"
    material = private_material(keys)

    def check() -> None:
        material.update(private_material(keys))  # old keys stay secrets after a rotation
        assert_no_key_served(public, material)

    check()
    for version in ("1.0", "1.1"):
        repo.publish(version)
        check()
    for role in ("targets", "snapshot", "timestamp", "root"):
        assert fleetup("keys", "rotate", "--repo", repo.path, role) == 0
        check()
    assert fleetup("repo", "refresh", "--repo", repo.path, "--role", "targets") == 0
    check()
    repo.yank("1.1")
    check()


def _old_layout(tmp_path: Path) -> Path:
    """A repository as the first layout left it: metadata/ and targets/ beside keys/."""
    repo = tmp_path / "old"
    layout = init_repo(repo)
    if layout.metadata.parent != repo:
        for name in ("metadata", "targets"):
            os.rename(layout.metadata.parent / name, repo / name)
        layout.metadata.parent.rmdir()
    return repo


@attack(ATTACKS, "repository.old-layout-refused", attacker="publisher-fs",
        refusal="every publisher command refuses a repository whose keys sit beside "
                "metadata/, naming `fleetup repo migrate REPO`")
def _old_layout_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _old_layout(tmp_path)
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(b"app")
    commands = [
        ("release", "add", src, "--repo", repo, "--app", APP, "--version", "1.0",
         "--platform", PLATFORM),
        ("release", "list", "--repo", repo),
        ("repo", "refresh", "--repo", repo),
        ("keys", "rotate", "--repo", repo, "timestamp"),
        ("admin", "repo", "init", "--from", repo, "--data", tmp_path / "data"),
    ]
    for command in commands:
        capsys.readouterr()
        assert fleetup(*command) == 1, command
        message = capsys.readouterr().err.strip()
        assert "\n" not in message
        assert f"fleetup repo migrate {repo}" in message, (command, message)
    assert not (tmp_path / "data" / "repo").exists()


@attack(ATTACKS, "repository.repo-serve-traversal", attacker="publisher-fs",
        refusal="`fleetup repo serve` answers only files under REPO/public: 404 for "
                "/keys/root.key and every (encoded) way up")
def _repo_serve_traversal(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetup", "repo", "serve", str(repo), "--port", "0"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "serving ... at http://127.0.0.1:PORT/ ..."
        assert " at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        assert get(url, "/metadata/1.root.json")[0] == 200
        for path in ("/keys/root.key", "/../keys/root.key", "/%2e%2e/keys/root.key",
                     "/metadata/../../keys/root.key", "/metadata/..%2f..%2fkeys%2froot.key",
                     "/%2E%2E%2Fkeys%2Froot.key", "/..%5ckeys%5croot.key",
                     "/fleetup-repo.json", "/../fleetup-repo.json", "/", "/metadata/"):
            status, body = get(url, path)
            assert status == 404, (path, status)
            assert b"PRIVATE KEY" not in body
    finally:
        process.terminate()
        process.wait(timeout=10)


def _device(url: str, public: Path, device: Path) -> Callable[[], list[ReleaseFacts]]:
    """A device's view through the agent's own TUF source: one refresh, its releases."""
    from fleetup.agent._trust import TufReleaseSource

    def releases() -> list[ReleaseFacts]:
        with TufReleaseSource(device / "tuf", device / "downloads", url,
                              public / "metadata/1.root.json") as source:
            source.refresh()
            return source.releases(APP, PLATFORM)

    return releases


@attack(ATTACKS, "repository.fast-forward-recovery", attacker="stolen-server",
        refusal="`fleetup keys rotate --repo REPO --online` rotates snapshot and "
                "timestamp in one root, and a device locked out by fast-forwarded "
                "versions updates again")
def _fast_forward_recovery(tmp_path: Path) -> None:
    repo = SampleRepo.create(tmp_path)
    public = RepoLayout(repo.path).metadata.parent
    repo.publish("1.0")
    with static_host(public) as url:
        device = _device(url, public, tmp_path / "device")

        def releases() -> list[str]:
            return [f.version for f in device()]

        assert releases() == ["1.0"]
        genuine = (public / "metadata/timestamp.json").read_bytes()
        resign_online(public, repo.path / "keys", 1000, 1000)
        with pytest.raises(HTTPStatusError):  # the forged snapshot's targets v1000 is absent
            releases()
        (public / "metadata/timestamp.json").write_bytes(genuine)
        (public / "metadata/1000.snapshot.json").unlink()
        repo.publish("1.1")
        with pytest.raises(RollbackAttackError):
            releases()  # locked out: the genuine versions look like a rollback
        assert fleetup("keys", "rotate", "--repo", repo.path, "timestamp") == 0
        with pytest.raises(RollbackAttackError):
            releases()  # the forged snapshot is still trusted: one key is not enough
        assert fleetup("keys", "rotate", "--repo", repo.path, "--online") == 0
        assert releases() == ["1.0", "1.1"]


@rows(ATTACKS)
def test_attack(row: Attack, request: pytest.FixtureRequest) -> None:
    run_row(row, request)


def test_pre_yank_replay_reaches_only_devices_that_never_saw_the_yank(tmp_path: Path) -> None:
    """A TUF limit, written down in docs/security.md: an online-key holder re-serves the
    targets metadata from before a yank with a fresh snapshot and timestamp."""
    repo = SampleRepo.create(tmp_path)
    public = RepoLayout(repo.path).metadata.parent
    repo.publish("1.0")
    repo.publish("1.1")
    with static_host(public) as url:
        unaware = _device(url, public, tmp_path / "unaware")
        aware = _device(url, public, tmp_path / "aware")
        assert [f.yanked for f in unaware()] == [False, False]
        pre_yank = Metadata[Timestamp].from_file(str(public / "metadata/timestamp.json"))
        targets_version = _snapshot_targets_version(public, pre_yank.signed)
        repo.yank("1.1")
        assert [f.yanked for f in aware()] == [False, True]
        resign_online(public, repo.path / "keys", 100, targets_version)
        assert [f.yanked for f in unaware()] == [False, False]  # the limit
        with pytest.raises(RollbackAttackError):
            aware()  # a device that saw the yank never goes back


def _snapshot_targets_version(public: Path, timestamp: Timestamp) -> int:
    name = f"{timestamp.snapshot_meta.version}.snapshot.json"
    snapshot = Metadata[Snapshot].from_file(str(public / "metadata" / name)).signed
    return snapshot.meta["targets.json"].version
