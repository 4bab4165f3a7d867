"""The fleet protocol's edges: idempotent events, malformed input, load shedding,
OpenAPI, and the operator CLI's direct database commands."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from fleetup.repository import init_repo
from fleetup.server import make_engine, upgrade_database
from fleetup.server._settings import sqlite_url
from tests.integration.server.conftest import Fleet, build_fleet
from tests.support.fleet import cli, wait_for


def test_events_are_stored_once_per_id(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    device = fleet.device(version="1.0")
    batch = [device.event("download-started", version="1.1"),
             device.event("download-finished", version="1.1")]
    first = device.report(*batch)
    assert first == {"accepted": [e["id"] for e in batch], "duplicates": []}
    extra = device.event("staged", version="1.1")
    again = device.report(*batch, extra, extra)
    assert again["accepted"] == [extra["id"]]
    assert again["duplicates"] == [batch[0]["id"], batch[1]["id"], extra["id"]]
    with fleet.server.client(fleet.tokens["viewer"]) as viewer:
        history = viewer.get(f"/api/v1/devices/{device.device_id}/history").json()
    assert history["count"] == 3
    assert sorted(e["event_id"] for e in history["data"]) == sorted(
        [e["id"] for e in batch] + [extra["id"]])


MALFORMED = [
    b"{not json", b"[]", b"null", b'"text"', b"{}", b'{"device_id": 5}',
    b'{"device_id": "a", "app": "hello", "platform": "p", "version": "not.a.version!"}',
    b'{"device_id": "a", "app": "hello", "platform": "p", "tags": {"k": {"deep": 1}}}',
    b'{"device_id": "' + b"x" * 5000 + b'", "app": "hello", "platform": "p"}',
    b'{"events": [{"id": "a", "type": "no-such-type", "at": "2026-01-01T00:00:00Z"}]}',
    b'{"events": "many"}', b'{"events": [{"id": "a", "type": "check", "at": 1e400}]}',
    b'{"enrollment_token": [], "device_id": "a"}', "{\"device_id\": \"\u00e9\"}".encode(),
    b"\xff\xfe\x00garbage",
]


PATHS = ["/api/v1/devices/enroll", "/api/v1/devices/checkin", "/api/v1/devices/events",
         "/api/v1/rollouts", "/api/v1/channels", "/api/v1/tokens"]


def test_malformed_input_is_a_4xx_json_error(shared_fleet: Fleet) -> None:
    device = shared_fleet.device(version="1.0")
    for path in PATHS:
        token = device.token if "/devices/" in path else shared_fleet.tokens["admin"]
        _check_malformed(shared_fleet, path, token)


def _check_malformed(fleet: Fleet, path: str, token: str) -> None:
    with httpx.Client(base_url=fleet.server.url, timeout=30,
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": "application/json"}) as client:
        for body in MALFORMED:
            response = client.post(path, content=body)
            assert 400 <= response.status_code < 500, (path, body[:40], response.text)
            error = response.json()["error"]
            assert error["code"]
            assert error["message"]
        for method in ("PUT", "DELETE"):
            response = client.request(method, path)
            assert response.status_code == 405
            assert response.json()["error"]["code"] == "method_not_allowed"
        assert client.get("/api/v1/no-such-thing").json()["error"]["code"] == "not_found"
        assert client.get("/api/v1/rollouts/not-a-number").status_code in (401, 422)


def test_openapi_is_published(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    spec = httpx.get(f"{fleet.server.url}/openapi.json").json()
    assert "/api/v1/devices/checkin" in spec["paths"]
    assert "/api/v1/rollouts/{rollout_id}/abort" in spec["paths"]


def test_overload_answers_503_with_retry_after(tmp_path: Path, db_url: str) -> None:
    fleet = build_fleet(tmp_path, db_url, env={"FLEETUP_SERVER_MAX_INFLIGHT_CHECKINS": "0",
                                               "FLEETUP_SERVER_RETRY_AFTER_SECONDS": "17"})
    try:
        device = fleet.device(version="1.0")
        response = httpx.post(f"{fleet.server.url}/api/v1/devices/checkin",
                              headers={"Authorization": f"Bearer {device.token}"},
                              json={"device_id": device.device_id, "app": "hello",
                                    "platform": "linux-x86_64"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "17"
        assert response.json()["error"]["code"] == "overloaded"
        # Events and operators are not shed.
        assert device.report(device.event("check"))["accepted"]
    finally:
        fleet.server.stop()


def test_admin_commands_act_on_the_database_directly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    engine = make_engine(sqlite_url(data))  # the server's data, as its first start leaves it
    upgrade_database(engine)
    engine.dispose()
    token = cli("admin", "token", "create", "--role", "viewer", "--data", str(data),
                subprocess_=True).stdout.strip()
    assert token.startswith("fuo_")
    enrollment = cli("admin", "enrollment-token", "create", "--data", str(data), "--json",
                     subprocess_=True).stdout
    assert json.loads(enrollment)["token"].startswith("fue_")
    # Seeding the release store copies only the online keys, even into the data dir
    # of a server that already ran (its empty repo/ folders exist).
    repo = tmp_path / "pub"
    init_repo(repo)
    (data / "repo" / "metadata").mkdir(parents=True)
    cli("admin", "repo", "init", "--from", str(repo), "--data", str(data))
    assert sorted(p.name for p in (data / "keys").iterdir()) == ["snapshot.key",
                                                                 "timestamp.key"]
    assert (data / "repo" / "metadata" / "timestamp.json").exists()
    again = cli("admin", "repo", "init", "--from", str(repo), "--data", str(data),
                check=False)
    assert again.returncode == 1
    assert "already holds a release store" in again.stderr


def test_inventory_reflects_check_ins(shared_fleet: Fleet) -> None:
    """Check-in reports are buffered and written in batches; the inventory shows them."""
    device = shared_fleet.device(version="1.0", tags={"site": "a"})
    device.checkin()
    device.tags, device.version = {"site": "inventory-b"}, "1.1"
    device.checkin()
    with shared_fleet.server.client(shared_fleet.tokens["viewer"]) as viewer:
        def record() -> dict[str, object] | None:
            body = viewer.get(f"/api/v1/devices/{device.device_id}").json()
            return body if body["tags"] == {"site": "inventory-b"} else None

        row = wait_for(record, what="the flushed check-in")
        assert (row["version"], row["previous_version"]) == ("1.1", "1.0")
        assert row["last_seen"] is not None
        groups = viewer.get("/api/v1/devices/groups").json()["data"]
        assert {"tag": "site", "value": "inventory-b", "devices": 1} in groups
        listed = viewer.get("/api/v1/devices", params={"tag": "site=inventory-b"}).json()
        assert [d["id"] for d in listed["data"]] == [device.device_id]
