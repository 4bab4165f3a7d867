"""A device token steering the fleet with false evidence (issue 12 §3).

The attacker holds one device's token (a device of its own, enrolled with the
fleet-wide token). Only devices a rollout offered its release to may count towards
its health; cohorts come from a server-made key, not the id the device chose; and
outcomes are counted once per device and release, not per event. Each row runs a
real ``fleetup server`` on loopback (SQLite) and speaks the fleet protocol over HTTP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetup._cohort import cohort_of
from tests.integration.server.conftest import Fleet, build_fleet
from tests.security._table import Attack, attack, rows, run_row
from tests.support.fleet import SimDevice, cli, wait_for

ATTACKS: list[Attack] = []


@pytest.fixture
def evidence_fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = build_fleet(tmp_path, f"sqlite:///{tmp_path / 'data' / 'fleetup.db'}")
    try:
        assert built.push("1.1") == 0
        yield built
    finally:
        built.server.stop()


def _start(fleet: Fleet, stages: str, *extra: str) -> int:
    result = cli("rollout", "start", "--server", fleet.server.url, "--app", "hello",
                 "--version", "1.1", "--channel", "stable", "--stages", stages, "--json",
                 *extra, token=fleet.tokens["publisher"])
    return int(json.loads(result.stdout)["id"])


def _rollout(fleet: Fleet, rollout_id: int) -> dict[str, Any]:
    with fleet.server.client(fleet.tokens["viewer"]) as client:
        return dict(client.get(f"/api/v1/rollouts/{rollout_id}").json())


def _next_rollout_id(fleet: Fleet) -> int:
    with fleet.server.client(fleet.tokens["viewer"]) as client:
        answer = client.post("/api/v1/rollouts/dry-run", json={
            "app": "hello", "version": "1.1", "channel": "stable", "stages": [50, 100]})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["rollout_id"])


@attack(ATTACKS, "fleet.foreign-device-health-failed-pauses", attacker="device",
        refusal="reports of devices the rollout never offered its release to do not count")
def _foreign_reports(evidence_fleet: Fleet) -> None:
    fleet = evidence_fleet
    honest = fleet.device(version="1.0")
    rollout_id = _start(fleet, "100", "--soak", "600", "--min-reports", "1",
                        "--max-failure-rate", "0.1")
    # A device of another app, and one of this app that never checked in: one
    # health failure each, naming the rollout.
    for attacker in (fleet.device(app="other", version="1.0"), fleet.device(version="1.0")):
        attacker.report(attacker.event("health-failed", version="1.1", from_version="1.0",
                                       rollout_id=rollout_id, reason="forged"))
    answer = honest.checkin()
    assert answer["action"] == "install"
    honest.install(answer)

    def counted() -> tuple[int, int]:
        stats = _rollout(fleet, rollout_id)["stats"]
        return int(stats["total_reports"]), int(stats["total_failures"])

    # The offer is written with the server's next check-in batch: wait for the honest
    # report to count; the forged ones never may (a failure would show at once).
    wait_for(lambda: counted() != (0, 0), what="the honest report")
    assert counted() == (1, 0)
    assert _rollout(fleet, rollout_id)["state"] == "active"


def _ground_id(salt: str, below: float) -> str:
    """A device id whose hash(id, rollout id) cohort falls under ``below`` percent."""
    while True:
        candidate = uuid.uuid4().hex
        if cohort_of(candidate, salt) < below:
            return candidate


@attack(ATTACKS, "fleet.ground-cohort-commits-without-installing", attacker="enrollment",
        refusal="cohorts hash a server-made key; a stage counts only devices it offered "
                "the release to")
def _ground_cohort(evidence_fleet: Fleet) -> None:
    fleet = evidence_fleet
    for _ in range(20):  # honest devices: stage 1 holds about half of them
        fleet.device(version="1.0")
    salt = str(_next_rollout_id(fleet))
    ground = _ground_id(salt, 50.0)
    attacker = SimDevice(fleet.server.url, device_id=ground, version="1.0")
    attacker.enroll(fleet.tokens["enroll"])
    rollout_id = _start(fleet, "50,100", "--soak", "0", "--min-reports", "1")
    assert str(rollout_id) == salt
    attacker.report(attacker.event("committed", version="1.1", from_version="1.0",
                                   rollout_id=rollout_id))
    info = _rollout(fleet, rollout_id)
    assert info["stage_index"] == 0
    assert info["state"] == "active"
    assert info["stats"]["stage_reports"] == 0
    status = json.loads(cli("rollout", "status", str(rollout_id), "--server",
                            fleet.server.url, "--json", token=fleet.tokens["viewer"]).stdout)
    cohort = {d["device_id"]: d["cohort"] for d in status["devices"]}[ground]
    assert cohort != round(cohort_of(ground, salt), 4)


@attack(ATTACKS, "fleet.one-device-repeats-failed-updates", attacker="device",
        refusal="outcomes count once per device and release, not per event")
def _repeated_failures(evidence_fleet: Fleet) -> None:
    fleet = evidence_fleet
    good, bad = fleet.device(version="1.0"), fleet.device(version="1.0")
    good.report(good.event("committed", version="1.1", from_version="1.0",
                           update_id="u-good"))
    forged = [bad.event("health-failed", version="1.1", from_version="1.0",
                        update_id=f"u-{i}", reason="forged") for i in range(100)]
    for start in range(0, len(forged), 20):
        bad.report(*forged[start:start + 20])
    with fleet.server.client(fleet.tokens["viewer"]) as client:
        rates = client.get("/api/v1/analytics/rates").json()
    assert rates["failure_rate"] == pytest.approx(0.5)


@rows(ATTACKS)
def test_attack(row: Attack, request: pytest.FixtureRequest) -> None:
    run_row(row, request)
