"""``init_repo``: layout, keys, expiries, and refusing to clobber."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata, Root

from fleetup.errors import UsageError
from fleetup.repository import ROLES, RepoConfig, init_repo
from tests.support.trees import fingerprint
from tests.unit.repository.conftest import make_client

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def load(repo: Path, name: str) -> Metadata[Root]:
    return Metadata.from_file(str(repo / "public/metadata" / name))


def test_layout_is_complete_and_nothing_else(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    layout = init_repo(repo)
    assert layout.root == repo
    assert sorted(fingerprint(repo)) == [
        "fleetup-repo.json", "keys", "keys/root.key", "keys/snapshot.key",
        "keys/targets.key", "keys/timestamp.key", "public", "public/metadata",
        "public/metadata/1.root.json", "public/metadata/1.snapshot.json",
        "public/metadata/1.targets.json", "public/metadata/root.json",
        "public/metadata/timestamp.json", "public/targets"]
    assert (repo / "public/metadata/root.json").read_bytes() == \
        (repo / "public/metadata/1.root.json").read_bytes()


def test_keys_are_private_ed25519_and_distinct_per_role(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    assert stat.S_IMODE((repo / "keys").stat().st_mode) == 0o700
    root = load(repo, "1.root.json").signed
    keyids = set()
    for role in ROLES:
        key_file = repo / "keys" / f"{role}.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        pem = key_file.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        keyid = SSlibKey.from_crypto(load_pem_private_key(pem, None).public_key()).keyid
        assert root.roles[role].keyids == [keyid]
        assert root.roles[role].threshold == 1
        keyids.add(keyid)
    assert len(keyids) == 4


def test_passphrase_encrypts_every_key(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, passphrase=b"correct horse")
    for role in ROLES:
        pem = (repo / "keys" / f"{role}.key").read_bytes()
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            load_pem_private_key(pem, None)
        load_pem_private_key(pem, b"correct horse")


def test_default_expiries_and_consistent_snapshots(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, now=NOW)
    expected = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
    files = {"root": "1.root.json", "targets": "1.targets.json",
             "snapshot": "1.snapshot.json", "timestamp": "timestamp.json"}
    for role, days in expected.items():
        signed = load(repo, files[role]).signed
        assert signed.expires == NOW + timedelta(days=days), role
        assert signed.version == 1
    assert load(repo, "1.root.json").signed.consistent_snapshot is True
    settings = json.loads((repo / "fleetup-repo.json").read_bytes())
    assert settings["expiry_days"] == {"root": 365.0, "targets": 90.0, "snapshot": 7.0,
                                       "timestamp": 1.0}
    assert RepoConfig.load(repo / "fleetup-repo.json") == RepoConfig()


def test_configured_expiries_are_used_and_remembered(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, expiry_days={"targets": 30, "timestamp": 0.5}, now=NOW)
    assert load(repo, "1.targets.json").signed.expires == NOW + timedelta(days=30)
    assert load(repo, "timestamp.json").signed.expires == NOW + timedelta(hours=12)
    assert load(repo, "1.snapshot.json").signed.expires == NOW + timedelta(days=7)
    assert RepoConfig.load(repo / "fleetup-repo.json").expiry_days["targets"] == 30


def test_a_client_trusting_root_v1_accepts_the_new_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    client = make_client(repo, tmp_path)
    client.refresh()
    assert client.get_targetinfo("anything") is None


@pytest.mark.parametrize("expiry", [{"targets": 0}, {"timestamp": -1}])
def test_non_positive_expiry_is_refused_before_anything_is_made(
        tmp_path: Path, expiry: dict[str, float]) -> None:
    with pytest.raises(UsageError, match="expiry days must be positive"):
        init_repo(tmp_path / "repo", expiry_days=expiry)
    assert not (tmp_path / "repo").exists()


def test_an_empty_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    init_repo(tmp_path / "repo")
    assert (tmp_path / "repo/public/metadata/1.root.json").is_file()


@pytest.mark.parametrize("kind", ["not-empty", "a-file", "a-repository"])
def test_init_never_clobbers(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "repo"
    if kind == "not-empty":
        target.mkdir()
        (target / "precious.txt").write_text("keep me")
    elif kind == "a-file":
        target.write_text("keep me")
    else:
        init_repo(target)
    before = fingerprint(tmp_path)
    with pytest.raises(UsageError, match="exists and is not an empty directory"):
        init_repo(target)
    assert fingerprint(tmp_path) == before
