"""Analytics, alert rules, dry runs and metrics on a seeded fleet, through the real
protocol and API (SQLite and PostgreSQL): the figures are the ones computed by hand.

The fleet: 10 devices on stable and 2 on beta, all on 1.0; a rollout of 1.1 on stable.
Devices 0-5 commit it (download to commit in 10, 20 ... 60 s on their clocks); device 6
fails its health check ("exit 3") and rolls back; device 7 refuses the download
("hash mismatch"); device 8's download times out twice ("timeout", two attempts);
device 9 says nothing. So: 10 updates, 6 succeeded, 4 failed, 1 rolled back.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.server.conftest import Fleet, build_fleet
from tests.support.fleet import SimDevice, cli, wait_for

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def alerting_fleet(tmp_path: Path, db_url: str) -> Iterator[Fleet]:
    """A fleet whose server evaluates alert rules every 0.2 s."""
    built = build_fleet(tmp_path, db_url, env={"FLEETUP_SERVER_ALERT_TICK_SECONDS": "0.2"})
    try:
        yield built
    finally:
        built.server.stop()


def api(fleet: Fleet, method: str, path: str, role: str = "viewer", **kwargs: Any) -> Any:
    with fleet.server.client(fleet.tokens[role]) as client:
        response = client.request(method, f"/api/v1{path}", **kwargs)
        assert response.status_code < 300, response.text
        return response.json()


def event(kind: str, update_id: str, at: datetime, rollout_id: int, version: str = "1.1",
          from_version: str = "1.0", reason: str = "") -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": kind, "at": at.isoformat(), "version": version,
            "from_version": from_version, "update_id": update_id, "rollout_id": rollout_id,
            "reason": reason}


def seed_outcomes(stable: list[SimDevice], rollout_id: int) -> None:
    for number, device in enumerate(stable[:6]):
        update = uuid.uuid4().hex
        device.report(event("download-started", update, T0, rollout_id),
                      event("switched", update, T0 + timedelta(seconds=5), rollout_id),
                      event("committed", update, T0 + timedelta(seconds=10 * (number + 1)),
                            rollout_id))
        device.version = "1.1"
    update = uuid.uuid4().hex
    stable[6].report(event("download-started", update, T0, rollout_id),
                     event("health-failed", update, T0, rollout_id, reason="exit 3"),
                     event("rolled-back", update, T0, rollout_id, version="1.0",
                           from_version="1.1", reason="exit 3"))
    stable[7].report(event("verify-failed", uuid.uuid4().hex, T0, rollout_id,
                           reason="hash  mismatch"))
    for _ in range(2):
        stable[8].report(event("download-failed", uuid.uuid4().hex, T0, rollout_id,
                               reason="timeout"))
    for device in stable:
        device.checkin()  # the server learns their versions


def test_analytics_and_alerts_on_a_seeded_fleet(alerting_fleet: Fleet) -> None:
    fleet = alerting_fleet
    assert fleet.push("1.1") == 0
    for body in ({"name": "failing rollout", "kind": "failure_rate", "threshold": 0.1,
                  "min_count": 5},
                 {"name": "rollbacks", "kind": "rollback"},
                 {"name": "bad bytes", "kind": "integrity_failure"},
                 {"name": "stuck", "kind": "stuck_devices", "threshold": 0, "min_count": 3}):
        api(fleet, "POST", "/alerts/rules", "admin", json=body)
    stable = [fleet.device(device_id=f"dev-{i:02d}", version="1.0") for i in range(10)]
    beta = [fleet.device(device_id=f"beta-{i}", version="1.0", channel="beta")
            for i in range(2)]
    for device in stable + beta:
        device.checkin()
    spec = {"app": "hello", "version": "1.1", "channel": "stable", "stages": [30, 100],
            "soak_seconds": 600, "min_reports": 8, "max_failure_rate": 0.5}

    dry = api(fleet, "POST", "/rollouts/dry-run", json=spec)
    assert json.loads(cli("rollout", "dry-run", "--server", fleet.server.url, "--app", "hello",
                          "--version", "1.1", "--channel", "stable", "--stages", "30,100",
                          "--json", token=fleet.tokens["viewer"]).stdout) == dry
    rollout = api(fleet, "POST", "/rollouts", "publisher", json=spec)
    rollout_id = rollout["id"]
    # Cohorts hash a key the server made at enrolment: ask it where each device fell.
    cohorts = {d["device_id"]: d["cohort"] for d in api(
        fleet, "GET", f"/rollouts/{rollout_id}/devices")["data"]}
    first_stage = sorted(d.device_id for d in stable if cohorts[d.device_id] < 30)
    assert dry["rollout_id"] == rollout_id
    assert (dry["matching"], dry["in_scope"], dry["will_install"]) == (10, 10, 10)
    assert [(s["percent"], s["reached"], s["new"]) for s in dry["stages"]] == [
        (30, len(first_stage), len(first_stage)), (100, 10, 10 - len(first_stage))]
    assert api(fleet, "GET", f"/rollouts/{rollout_id}")["stats"]["stage_targeted"] == len(
        first_stage)

    # The operator advances the rollout to 100 %: every stable device is offered 1.1
    # (only offered devices count towards the rollout's health).
    advanced = cli("rollout", "advance", str(rollout_id), "--server", fleet.server.url,
                   "--json", token=fleet.tokens["publisher"]).stdout
    assert json.loads(advanced)["stage_percent"] == 100
    assert all(d.checkin()["action"] == "install" for d in stable)
    seed_outcomes(stable, rollout_id)
    wait_for(lambda: {v["version"]: v["devices"] for v in api(
        fleet, "GET", "/analytics/versions")["data"]} == {"1.1": 6, "1.0": 6},
        what="the check-ins to be written")

    versions = api(fleet, "GET", "/analytics/versions")
    assert [(v["app"], v["version"], v["devices"], v["share"]) for v in versions["data"]] == [
        ("hello", "1.1", 6, 0.5), ("hello", "1.0", 6, 0.5)]
    assert versions["count"] == 12

    rates = api(fleet, "GET", "/analytics/rates", params={"hours": 2})
    # One update per device and version: dev-08's two download failures are one.
    assert (rates["updates"], rates["succeeded"], rates["failed"], rates["rolled_back"]) == (
        9, 6, 3, 1)
    assert (rates["success_rate"], rates["failure_rate"], rates["rollback_rate"]) == (
        pytest.approx(6 / 9), pytest.approx(3 / 9), pytest.approx(1 / 9))
    assert len(rates["hourly"]) == 2
    assert sum(h["succeeded"] for h in rates["hourly"]) == 6
    assert sum(h["failed"] for h in rates["hourly"]) == 3
    assert api(fleet, "GET", "/analytics/rates", params={"app": "other"})["updates"] == 0

    timing = api(fleet, "GET", "/analytics/time-to-update")
    assert timing["install_seconds"] == {"count": 6, "p50": 30.0, "p90": 60.0, "p95": 60.0,
                                         "p99": 60.0, "max": 60.0}
    assert timing["rollout_seconds"]["count"] == 6
    assert 0 <= timing["rollout_seconds"]["p50"] <= timing["rollout_seconds"]["max"] < 600

    reasons = api(fleet, "GET", "/analytics/failure-reasons",
                  params={"rollout_id": rollout_id})["data"]
    assert [(r["reason"], r["count"], r["devices"], r["types"]) for r in reasons] == [
        ("timeout", 2, 1, ["download-failed"]), ("exit 3", 1, 1, ["health-failed"]),
        ("hash mismatch", 1, 1, ["verify-failed"])]

    # Nothing completed yet: no channel has a target, nobody is stuck.
    assert api(fleet, "GET", "/analytics/stuck", params={"hours": 0})["count"] == 0
    # Reports: devices 0-8 (6, 7 and 8 failed) -> 3 of 9 = 33 % > 10 % with >= 5 reports.
    wait_for(lambda: {a["kind"] for a in api(fleet, "GET", "/alerts")["data"]} == {
        "failure_rate", "rollback", "integrity_failure"}, what="three alerts")

    # The operator advances the rollout a second time: complete.
    assert api(fleet, "POST", f"/rollouts/{rollout_id}/advance", "publisher")[
        "state"] == "completed"
    stuck = api(fleet, "GET", "/analytics/stuck", params={"hours": 0})
    assert [(s["device_id"], s["version"], s["target_version"], s["rollout_id"])
            for s in stuck["data"]] == [(f"dev-0{i}", "1.0", "1.1", rollout_id)
                                        for i in (6, 7, 8, 9)]
    assert api(fleet, "GET", "/analytics/stuck", params={"hours": 24})["count"] == 0

    wait_for(lambda: len(api(fleet, "GET", "/alerts")["data"]) == 4, what="the stuck alert")
    raised = {a["kind"]: a for a in api(fleet, "GET", "/alerts")["data"]}
    assert raised["failure_rate"]["key"] == f"rollout:{rollout_id}"
    # Raised when the rate first crossed the threshold (reports arrive one by one).
    reports = raised["failure_rate"]["details"]["reports"]
    failures = raised["failure_rate"]["details"]["failures"]
    assert 5 <= reports <= 9
    assert failures / reports > 0.1
    assert raised["rollback"]["key"] == f"rollout:{rollout_id}:rollback"
    assert raised["integrity_failure"]["key"] == "integrity:dev-07:1.1"
    assert raised["stuck_devices"]["key"] == "stuck:hello:stable:1.1"
    assert raised["stuck_devices"]["details"]["devices"] == 4
    assert all(a["deliveries"] == [] for a in raised.values())  # no webhooks configured

    # Acknowledged alerts leave the open list; the audit log says who.
    api(fleet, "POST", f"/alerts/{raised['integrity_failure']['id']}/ack", "publisher")
    assert len(api(fleet, "GET", "/alerts", params={"state": "open"})["data"]) == 3
    actions = [e["action"] for e in api(fleet, "GET", "/audit", "admin")["data"]]
    assert actions.count("alert.ack") == 1
    assert actions.count("rollout.advance") == 2
    assert actions.count("alert_rule.create") == 4
    # Evaluated many times since: still one alert per condition.
    assert len(api(fleet, "GET", "/alerts")["data"]) == 4


def test_rule_crud_and_validation(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    rule = api(fleet, "POST", "/alerts/rules", "admin", json={
        "name": "slow", "kind": "stuck_devices", "threshold": 48,
        "webhook_url": "https://hooks.example.com/x", "webhook_secret": "k"})
    assert (rule["threshold"], rule["signed"], rule["enabled"]) == (48, True, True)
    changed = api(fleet, "PATCH", f"/alerts/rules/{rule['id']}", "admin",
                  json={"enabled": False, "threshold": 72})
    assert (changed["enabled"], changed["threshold"], changed["name"]) == (False, 72, "slow")
    with fleet.server.client(fleet.tokens["admin"]) as admin:
        for body in ({"name": "x", "kind": "failure_rate", "threshold": 5},
                     {"name": "x", "kind": "nonsense"},
                     {"name": "x", "kind": "rollback", "webhook_url": "ftp://example.com"}):
            response = admin.post("/api/v1/alerts/rules", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"]["code"] == "invalid_request"
        assert admin.delete(f"/api/v1/alerts/rules/{rule['id']}").status_code == 200
        assert admin.get(f"/api/v1/alerts/rules/{rule['id']}").status_code == 404


def test_metrics_count_checkins_events_and_rollout_states(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    device = fleet.device(version="1.0")
    for _ in range(3):
        device.checkin()
    device.report(device.event("check", version="1.0"), device.event("error", reason="x"))
    with fleet.server.client() as anyone:
        response = anyone.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line and not line.startswith("#")}
    assert lines['fleetup_checkins_total{status="200"}'] >= 3
    assert lines['fleetup_events_total{type="error"}'] >= 1
    assert lines['fleetup_events_total{type="check"}'] >= 1
    assert 'fleetup_rollouts{state="active"}' in lines
    assert lines['fleetup_http_request_duration_seconds_count{method="POST",route='
                 '"/api/v1/devices/checkin",status="200"}'] >= 3
    assert any('route="/api/v1/devices/events"' in key for key in lines)


def test_every_scrape_sums_all_workers(tmp_path: Path) -> None:
    """Two worker processes answer in turn; each scrape must count every check-in."""
    before = set(Path(tempfile.gettempdir()).glob("fleetup-metrics-*"))
    fleet = build_fleet(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", workers=2)
    try:
        device = fleet.device(version="1.0")
        for _ in range(40):  # on fresh connections: the kernel spreads them over workers
            device.checkin()
        key = ('fleetup_http_request_duration_seconds_count{method="POST",'
               'route="/api/v1/devices/checkin",status="200"}')
        counts = []
        for _ in range(6):
            with fleet.server.client() as anyone:
                text = anyone.get("/metrics").text
            counts.append(_samples(text)[key])
        assert counts == [40.0] * 6
    finally:
        fleet.server.stop()
    assert set(Path(tempfile.gettempdir()).glob("fleetup-metrics-*")) <= before  # removed


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}
