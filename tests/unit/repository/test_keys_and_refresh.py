"""``refresh_repo`` and ``rotate_key``: fresh expiries, new keys, and old clients still update."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import SSlibKey
from tuf.api.metadata import Metadata, Root

from fleetup.errors import MetadataExpiredError, UsageError
from fleetup.repository import (
    ONLINE_ROLES,
    ROLES,
    init_repo,
    refresh_repo,
    rotate_key,
    rotate_keys,
)
from tests.unit.repository.conftest import PLATFORM, Publish, make_client

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def meta(repo: Path, name: str) -> Metadata[Any]:
    return Metadata.from_file(str(repo / "public/metadata" / name))


def latest_root(repo: Path) -> Metadata[Root]:
    versions = [int(p.name.split(".")[0]) for p in (repo / "public/metadata").glob("*.root.json")]
    return meta(repo, f"{max(versions)}.root.json")


def key_id(repo: Path, role: str, passphrase: bytes | None = None) -> str:
    pem = (repo / "keys" / f"{role}.key").read_bytes()
    return SSlibKey.from_crypto(load_pem_private_key(pem, passphrase).public_key()).keyid


# -- refresh ------------------------------------------------------------------------------


def test_refresh_resigns_snapshot_and_timestamp_with_fresh_expiries(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, now=NOW)
    later = NOW + timedelta(days=6, hours=23)
    assert refresh_repo(repo, now=later) == {"snapshot": 2, "timestamp": 2}
    assert meta(repo, "2.snapshot.json").signed.expires == later + timedelta(days=7)
    assert meta(repo, "timestamp.json").signed.expires == later + timedelta(days=1)
    assert meta(repo, "timestamp.json").signed.snapshot_meta.version == 2
    assert not (repo / "public/metadata/2.targets.json").exists()


def test_refresh_works_after_snapshot_and_timestamp_expired(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, now=NOW)
    later = NOW + timedelta(days=30)
    refresh_repo(repo, now=later)
    assert meta(repo, "timestamp.json").signed.expires == later + timedelta(days=1)


def test_refresh_of_targets_and_root(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, now=NOW)
    later = NOW + timedelta(days=100)
    versions = refresh_repo(repo, roles=("root", "targets", "snapshot", "timestamp"),
                            now=later)
    assert versions == {"root": 2, "targets": 2, "snapshot": 2, "timestamp": 2}
    assert meta(repo, "2.targets.json").signed.expires == later + timedelta(days=90)
    assert meta(repo, "2.root.json").signed.expires == later + timedelta(days=365)
    assert meta(repo, "2.snapshot.json").signed.meta["targets.json"].version == 2


def test_refresh_refuses_when_targets_expired_and_says_how_to_fix(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, now=NOW)
    with pytest.raises(MetadataExpiredError,
                       match=r"targets metadata expired at 2025-08-30.*--role targets"):
        refresh_repo(repo, now=NOW + timedelta(days=91))


@pytest.mark.parametrize("roles", [(), ("snapshot", "bogus"), ("nope",)])
def test_refresh_refuses_unknown_roles(repo: Path, roles: tuple[str, ...]) -> None:
    with pytest.raises(UsageError, match="roles must be among"):
        refresh_repo(repo, roles=roles)


def test_refreshed_repository_verifies_for_a_client(repo: Path, publish: Publish,
                                                    tmp_path: Path) -> None:
    publish("1.0.0", payload_size=100)
    refresh_repo(repo, roles=("targets", "snapshot", "timestamp"))
    client = make_client(repo, tmp_path)
    client.refresh()
    info = client.get_targetinfo(f"hello/{PLATFORM}/hello-1.0.0.tar.zst")
    assert info is not None
    client.download_target(info)


# -- rotate -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_rotate_replaces_the_key_in_a_new_root_signed_by_old_and_new(
        repo: Path, publish: Publish, tmp_path: Path, role: str) -> None:
    publish("1.0.0", payload_size=100)
    old_root = meta(repo, "1.root.json")
    old_keyid = key_id(repo, role)

    new_keyid = rotate_key(repo, role)

    assert new_keyid == key_id(repo, role) != old_keyid
    new_root = latest_root(repo)
    assert new_root.signed.version == 2
    assert new_root.signed.roles[role].keyids == [new_keyid]
    assert old_keyid not in new_root.signed.keys          # revoked, not just unassigned
    # The new root satisfies the old root's root role, and its own.
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    assert (repo / "public/metadata/root.json").read_bytes() == \
        (repo / "public/metadata/2.root.json").read_bytes()
    assert sorted(p.name for p in (repo / "keys").iterdir()) == [f"{r}.key" for r in
                                                                 sorted(ROLES)]
    assert (repo / "keys" / f"{role}.key").stat().st_mode & 0o777 == 0o600

    # A client that trusted only root v1 follows the rotation and still verifies.
    client = make_client(repo, tmp_path, trusted_root=old_root.to_bytes())
    client.refresh()
    info = client.get_targetinfo(f"hello/{PLATFORM}/hello-1.0.0.tar.zst")
    assert info is not None
    client.download_target(info)

    # And the repository keeps publishing with the new key.
    publish("1.0.1", payload_size=100)
    client = make_client(repo, tmp_path / "second")
    client.refresh()
    assert client.get_targetinfo(f"hello/{PLATFORM}/hello-1.0.1.tar.zst") is not None


def test_rotating_every_role_twice_keeps_a_v1_client_updating(repo: Path, publish: Publish,
                                                              tmp_path: Path) -> None:
    publish("1.0.0", payload_size=100)
    for role in (*ROLES, *ROLES):
        rotate_key(repo, role)
    assert latest_root(repo).signed.version == 9
    client = make_client(repo, tmp_path)
    client.refresh()
    assert client.get_targetinfo(f"hello/{PLATFORM}/hello-1.0.0.tar.zst") is not None


def test_rotate_keeps_keys_encrypted(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, passphrase=b"pw")
    rotate_key(repo, "targets", passphrase=b"pw")
    assert (repo / "keys/targets.key").read_bytes().startswith(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key_id(repo, "targets", b"pw") in latest_root(repo).signed.roles["targets"].keyids


def test_rotate_refuses_an_unknown_role(repo: Path) -> None:
    with pytest.raises(UsageError, match="not a role: 'admin'"):
        rotate_key(repo, "admin")


def test_rotate_online_replaces_snapshot_and_timestamp_in_one_root(
        repo: Path, publish: Publish, tmp_path: Path) -> None:
    publish("1.0.0", payload_size=100)
    before = {role: key_id(repo, role) for role in ROLES}
    new = rotate_keys(repo, ONLINE_ROLES)
    assert sorted(new) == ["snapshot", "timestamp"]
    root = latest_root(repo).signed
    assert root.version == 2
    for role in ROLES:
        assert root.roles[role].keyids == [new.get(role, before[role])]
    assert sorted(p.name for p in (repo / "keys").iterdir()) == [f"{r}.key" for r in
                                                                 sorted(ROLES)]
    client = make_client(repo, tmp_path, trusted_root=meta(repo, "1.root.json").to_bytes())
    client.refresh()
    assert client.get_targetinfo(f"hello/{PLATFORM}/hello-1.0.0.tar.zst") is not None


def test_rotate_keys_refuses_no_role(repo: Path) -> None:
    with pytest.raises(UsageError, match="not a role"):
        rotate_keys(repo, ())
