"""The server killed mid-rollout, and two servers on one PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.server.conftest import Fleet, build_fleet
from tests.integration.server.test_rollouts import (
    audit_actions,
    poll_round,
    rollout,
    start_rollout,
)
from tests.support.fleet import FleetServer, SimDevice, wait_for


def history_ids(fleet: Fleet, device: SimDevice) -> list[str]:
    with fleet.server.client(fleet.tokens["viewer"]) as viewer:
        body = viewer.get(f"/api/v1/devices/{device.device_id}/history",
                          params={"limit": 1000}).json()
    return [e["event_id"] for e in body["data"]]


@pytest.mark.slow
def test_kill_9_mid_rollout_loses_and_doubles_nothing(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    devices = [fleet.device(version="1.0") for _ in range(30)]
    rollout_id = start_rollout(fleet, "1.1", "10,50,100", "--soak", "1", "--min-reports", "1")
    wait_for(lambda: (poll_round(devices), rollout(fleet, rollout_id)["stage_index"] >= 1)[1],
             what="the first advance")

    fleet.server.kill()
    # A device whose report did not get through keeps it queued, with the same ids.
    straggler = next(d for d in devices if d.version == "1.0")
    queued = [straggler.event("download-started", version="1.1"),
              straggler.event("download-failed", version="1.1", reason="server gone")]
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{fleet.server.url}/api/v1/devices/events", json={"events": queued},
                   headers={"Authorization": f"Bearer {straggler.token}"})
    fleet.server.start()

    assert straggler.report(*queued)["accepted"] == [e["id"] for e in queued]
    assert straggler.report(*queued)["duplicates"] == [e["id"] for e in queued]
    wait_for(lambda: (poll_round(devices), rollout(fleet, rollout_id)["state"])[1]
             == "completed", what="the rollout to resume and complete")
    # Completed means offered to every device; the last ones take it at their next poll.
    wait_for(lambda: (poll_round(devices), all(d.version == "1.1" for d in devices))[1],
             what="every device on 1.1")
    for device in devices:
        stored = history_ids(fleet, device)
        assert sorted(stored) == sorted(device.acknowledged)  # none lost, none doubled
    actions = audit_actions(fleet)
    assert actions.count("rollout.advance") == 2
    assert actions.count("rollout.complete") == 1


@pytest.mark.slow
@pytest.mark.postgres
def test_two_servers_on_one_postgresql_advance_once(tmp_path: Path, pg_url: str) -> None:
    fast_ticks = {"FLEETUP_SERVER_ROLLOUT_TICK_SECONDS": "0.05"}
    fleet = build_fleet(tmp_path, pg_url, env=fast_ticks)
    other = FleetServer(fleet.server.data, pg_url, fast_ticks).start()
    try:
        assert fleet.push("1.1") == 0
        devices = [fleet.device(version="1.0") for _ in range(40)]
        for number, device in enumerate(devices):  # half of them talk to the other server
            if number % 2:
                device.server = other.url
        rollout_id = start_rollout(fleet, "1.1", "5,25,50,100", "--soak", "0",
                                   "--min-reports", "1")

        def same_answers() -> bool:
            late = SimDevice(fleet.server.url, version="1.0").enroll(fleet.tokens["enroll"])
            first = late.checkin()
            late.server = other.url
            second = late.checkin()
            return first["action"] == second["action"] and first["version"] == second["version"]

        wait_for(same_answers, what="both servers to agree")
        wait_for(lambda: (poll_round(devices), rollout(fleet, rollout_id)["state"])[1]
                 == "completed", what="the rollout to complete")
        actions = audit_actions(fleet)
        assert actions.count("rollout.advance") == 3
        assert actions.count("rollout.complete") == 1
        wait_for(lambda: (poll_round(devices), all(d.version == "1.1" for d in devices))[1],
                 what="every device on 1.1")
    finally:
        other.stop()
        fleet.server.stop()


def test_a_rollout_change_applies_once_per_seen_revision(db_url: str) -> None:
    """The guard under every automatic and operator change: two writers that judged the
    same revision cannot both apply (and audit) their change."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from fleetup.server import _crud, make_engine, upgrade_database
    from fleetup.server._models import AuditEntry, Rollout
    from fleetup.server._rollouts import RolloutState

    engine = make_engine(db_url)
    upgrade_database(engine)
    with Session(engine) as setup:
        row = _crud.create_rollout(setup, app="hello", version="1.1", channel="stable",
                                   stages=[10, 100], soak_seconds=0, min_reports=1,
                                   max_failure_rate=0.1, group={}, created_by="test")
        setup.commit()
        rollout_id, revision = row.id, row.revision
    outcomes = []
    for _ in range(2):  # two evaluators that both saw `revision`
        with Session(engine) as session:
            outcomes.append(_crud.update_rollout(
                session, rollout_id=rollout_id, seen_revision=revision,
                from_states=[RolloutState.ACTIVE], actor="system", action="rollout.advance",
                stage_index=1))
    with Session(engine) as check:
        audited = check.scalars(select(AuditEntry).where(
            AuditEntry.action == "rollout.advance")).all()
        stored = check.get(Rollout, rollout_id)
        assert stored is not None
        assert (stored.stage_index, stored.revision) == (1, revision + 1)
    engine.dispose()
    assert outcomes == [True, False]
    assert len(audited) == 1
