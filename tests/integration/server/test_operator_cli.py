"""The operator CLI covers what the dashboard shows and acts on one device (issue 16
§1, §2): `device list|show|check|move|remove`, `rollout list`, `alert list|ack`,
`release list --server`, all with --json, errors as JSON too; through the real CLI
against a real server on loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.server.conftest import Fleet
from tests.support.fleet import cli

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run(fleet: Fleet, role: str, *args: str, code: int = 0) -> Any:
    result = cli(*args, "--server", fleet.server.url, "--json", token=fleet.tokens[role],
                 check=False)
    assert result.returncode == code, result.stderr + result.stdout
    return json.loads(result.stdout)


def audited(fleet: Fleet) -> list[str]:
    with fleet.server.client(fleet.tokens["viewer"]) as client:
        return [e["action"] for e in client.get("/api/v1/audit").json()["data"]]


def test_one_device_read_moved_checked_and_removed(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    moved, stays = fleet.device(version="1.0"), fleet.device(version="1.0")
    for d in (moved, stays):
        d.checkin()
    listed = run(fleet, "viewer", "device", "list")
    assert {d["id"] for d in listed} == {moved.device_id, stays.device_id}
    # Viewers read, only admins act; the refusal is JSON under --json, exit code 1.
    refused = run(fleet, "viewer", "device", "move", moved.device_id, "--channel", "beta",
                  code=1)
    assert refused["code"] == "forbidden"
    assert "403" in refused["error"]
    shown = run(fleet, "admin", "device", "move", moved.device_id, "--channel", "beta")
    assert shown["channel"] == "stable"
    assert shown["channel_override"] == "beta"
    # The server decides by the new channel at once: a rollout on beta reaches it alone.
    cli("rollout", "start", "--server", fleet.server.url, "--app", "hello", "--version",
        "1.1", "--channel", "beta", "--stages", "100", token=fleet.tokens["publisher"])
    assert wait_answer(moved)["version"] == "1.1"
    assert stays.checkin()["action"] == "none"
    # check: the next answer says check again soon, the one after it does not.
    run(fleet, "admin", "device", "check", stays.device_id)
    assert stays.checkin()["next_check_seconds"] <= 5
    assert stays.checkin()["next_check_seconds"] > 5
    # remove: the token stops working, the record and its history stay.
    stays.report(stays.event("check"))
    run(fleet, "admin", "device", "remove", stays.device_id)
    with fleet.server.client() as client:
        answer = client.post("/api/v1/devices/checkin", json={
            "device_id": stays.device_id, "app": "hello", "platform": stays.platform,
            "channel": "stable", "tags": {}, "version": "1.0", "state": "idle",
            "kept": [], "failed": []}, headers={"Authorization": f"Bearer {stays.token}"})
    assert answer.status_code == 401
    shown = run(fleet, "viewer", "device", "show", stays.device_id)
    assert shown["removed_at"] is not None
    assert shown["event_count"] == 1
    again = run(fleet, "admin", "device", "check", stays.device_id, code=1)
    assert again["code"] == "device_removed"
    assert {"device.move", "device.check", "device.remove"} <= set(audited(fleet))


def wait_answer(device: Any) -> dict[str, Any]:
    """The device's check-in answer once the server's caches hold the new rollout."""
    from tests.support.fleet import wait_for

    answers: list[dict[str, Any]] = []
    wait_for(lambda: answers.append(device.checkin()) or answers[-1]["action"] == "install",
             what="the rollout offered on beta")
    return answers[-1]


def test_lists_the_dashboard_shows(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    releases = run(fleet, "viewer", "release", "list")
    assert {r["version"] for r in releases} == {"1.0", "1.1"}
    started = run(fleet, "publisher", "rollout", "start", "--app", "hello", "--version",
                  "1.1", "--channel", "stable", "--stages", "100")
    rollouts = run(fleet, "viewer", "rollout", "list")
    assert [r["id"] for r in rollouts] == [started["id"]]
    assert run(fleet, "viewer", "alert", "list") == []
    missing = run(fleet, "publisher", "alert", "ack", "999", code=1)
    assert missing["code"] == "not_found"
    human = cli("rollout", "list", "--server", fleet.server.url, token=fleet.tokens["viewer"])
    assert "1.1" in human.stdout
    assert "active" in human.stdout
