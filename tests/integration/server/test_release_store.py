"""The release store: pushes are verified against the trusted root, and the server's
data directory (online keys included) cannot make a device install anything new."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater

from fleetup.repository import FileRepository, RepoConfig, key_path, load_signer
from fleetup.server._store import store_layout
from tests.integration.server.conftest import Fleet
from tests.support.fleet import cli, wait_for

RELEASE_11 = "hello/linux-x86_64/hello-1.1.tar.zst"


def updater(fleet: Fleet, work: Path) -> Updater:
    """A plain python-tuf client of the server's /repo/, trusting the publisher's root
    (the first time) or what it trusted before (its metadata dir, later)."""
    first = not (work / "root.json").exists()
    (work / "downloads").mkdir(parents=True, exist_ok=True)
    bootstrap = (fleet.repo / "public/metadata" / "1.root.json").read_bytes() if first else None
    return Updater(str(work), f"{fleet.server.url}/repo/metadata/", str(work / "downloads"),
                   f"{fleet.server.url}/repo/targets/", bootstrap=bootstrap)


def test_push_publishes_what_the_publisher_signed(fleet: Fleet, tmp_path: Path) -> None:
    result = cli("release", "push", "--repo", str(fleet.repo), "--app", "hello", "--version",
                 "1.1", "--server", fleet.server.url, "--json", subprocess_=True,
                 token=fleet.tokens["publisher"])
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    assert RELEASE_11 in pushed["stored_files"]
    assert "hello/linux-x86_64/hello-1.0.tar.zst" not in pushed["stored_files"]  # it had it
    client = updater(fleet, tmp_path / "device")
    client.refresh()
    info = client.get_targetinfo(RELEASE_11)
    assert info is not None
    assert Path(client.download_target(info)).stat().st_size == info.length
    with fleet.server.client(fleet.tokens["viewer"]) as viewer:
        versions = {r["version"] for r in viewer.get("/api/v1/releases").json()["data"]}
    assert versions == {"1.0", "1.1"}  # 1.2 is named by the targets, not pushed yet
    # Pushing the same release again succeeds and says so; a viewer's push is refused.
    again = cli("release", "push", "--repo", str(fleet.repo), "--app", "hello",
                "--version", "1.1", "--server", fleet.server.url, check=False,
                token=fleet.tokens["publisher"])
    assert again.returncode == 0, again.stderr
    assert "already on the server" in again.stderr
    refused = cli("release", "push", "--repo", str(fleet.repo), "--app", "hello",
                  "--version", "1.1", "--server", fleet.server.url, check=False,
                  token=fleet.tokens["viewer"])
    assert "forbidden" in refused.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_data_directory_cannot_get_a_device_to_install_anything_new(
        fleet: Fleet, tmp_path: Path) -> None:
    """Someone with the server's data dir (snapshot + timestamp keys) but not the
    publisher's keys forges a release; python-tuf's Updater refuses it."""
    client = updater(fleet, tmp_path / "device")
    client.refresh()
    data = fleet.server.data
    layout = store_layout(data)
    repo = FileRepository(layout, RepoConfig.load(layout.config))
    root = repo.root()
    for role in ("snapshot", "timestamp"):
        repo.signers[role] = [load_signer(key_path(data / "keys", role), None,
                                          set(root.roles[role].keyids), role)]
    assert not (data / "keys" / "targets.key").exists()
    assert not (data / "keys" / "root.key").exists()
    evil = tmp_path / "evil.tar.zst"
    evil.write_bytes(b"rm -rf /")
    forged = repo.targets()
    target = TargetFile.from_file("hello/linux-x86_64/hello-9.9.tar.zst", str(evil), ["sha256"])
    forged.targets[target.path] = target
    forged.version += 1
    forged.expires = datetime.now(UTC) + timedelta(days=30)
    md = Metadata(forged)
    md.sign(repo.signers["snapshot"][0])  # the best key the thief has
    md.sign(CryptoSigner.generate_ed25519(), append=True)  # or a fresh one
    # The server itself refuses it ...
    with fleet.server.client(fleet.tokens["publisher"]) as publisher:
        response = publisher.post("/api/v1/releases",
                                  files={"targets": ("t.json", md.to_bytes())})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "untrusted_metadata"
    # ... and so does every device, even when the thief publishes it by hand with
    # freshly signed snapshot and timestamp.
    repo.stage_signed(md)
    repo.stage_target(evil, target)
    repo.do_snapshot()
    repo.do_timestamp(force=True)
    repo.commit()
    assert httpx.get(f"{fleet.server.url}/repo/metadata/timestamp.json").status_code == 200
    fresh = updater(fleet, tmp_path / "new-device")
    with pytest.raises(UnsignedMetadataError):
        fresh.refresh()
    with pytest.raises(UnsignedMetadataError):
        updater(fleet, tmp_path / "device").refresh()  # the device that trusted it before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_expiring_metadata_is_re_signed(tmp_path: Path, db_url: str) -> None:
    from tests.integration.server.conftest import build_fleet

    fleet = build_fleet(tmp_path, db_url, env={
        "FLEETUP_SERVER_RESIGN_CHECK_SECONDS": "0.3",
        "FLEETUP_SERVER_RESIGN_REMAINING_SHARE": "0.9999999"})
    try:
        def timestamp_version() -> int:
            body = httpx.get(f"{fleet.server.url}/repo/metadata/timestamp.json").json()
            return int(body["signed"]["version"])

        before = timestamp_version()
        wait_for(lambda: timestamp_version() > before, what="a re-signed timestamp")
        client = updater(fleet, tmp_path / "device")
        client.refresh()
        assert client.get_targetinfo("hello/linux-x86_64/hello-1.0.tar.zst") is not None
        with fleet.server.client(fleet.tokens["admin"]) as admin:
            audit = admin.get("/api/v1/audit").json()["data"]
        assert any(e["action"] == "repo.resign" for e in audit)
    finally:
        fleet.server.stop()
