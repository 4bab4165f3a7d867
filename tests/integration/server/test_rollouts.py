"""Staged rollouts end to end: real server processes, simulated devices over HTTP."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.server.conftest import Fleet
from tests.support.fleet import SimDevice, cli, wait_for


def start_rollout(fleet: Fleet, version: str, stages: str, *extra: str) -> int:
    result = cli("rollout", "start", "--server", fleet.server.url, "--app", "hello",
                 "--version", version, "--channel", "stable", "--stages", stages, "--json",
                 *extra, token=fleet.tokens["publisher"])
    return int(json.loads(result.stdout)["id"])


def rollout(fleet: Fleet, rollout_id: int) -> dict[str, Any]:
    with fleet.server.client(fleet.tokens["viewer"]) as client:
        response = client.get(f"/api/v1/rollouts/{rollout_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


def audit_actions(fleet: Fleet) -> list[str]:
    with fleet.server.client(fleet.tokens["admin"]) as client:
        entries = client.get("/api/v1/audit", params={"limit": 1000}).json()["data"]
    return [e["action"] for e in reversed(entries)]


def poll_round(devices: list[SimDevice], failing: set[str] | None = None) -> list[str]:
    """Every device checks in once and acts on the answer; returns who installed."""
    installed = []
    for device in devices:
        answer = device.checkin()
        if answer["action"] in ("install", "rollback"):
            device.install(answer, healthy=device.device_id not in (failing or set()))
            installed.append(device.device_id)
    return installed


def test_staged_rollout_advances_by_itself_and_completes(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    devices = [fleet.device(version="1.0") for _ in range(20)]
    others = [fleet.device(version="1.0", channel="beta")]
    assert all(d.checkin()["action"] == "none" for d in devices)
    rollout_id = start_rollout(fleet, "1.1", "10,50,100", "--soak", "0", "--min-reports", "1")

    first = wait_for(lambda: poll_round(devices), what="the first stage's installs")
    stage_one = rollout(fleet, rollout_id)
    cohorts = {d["device_id"]: d["cohort"] for d in json.loads(cli(
        "rollout", "status", str(rollout_id), "--server", fleet.server.url, "--json",
        token=fleet.tokens["viewer"]).stdout)["devices"]}
    # The first devices offered the release are those whose cohort is under the stage,
    # not the first to poll.
    assert all(cohorts[d] < stage_one["stage_percent"] for d in first)

    def completed() -> bool:
        poll_round(devices)
        return rollout(fleet, rollout_id)["state"] == "completed"

    wait_for(completed, what="the rollout to complete")
    wait_for(lambda: (poll_round(devices), all(d.version == "1.1" for d in devices))[1],
             what="every device on 1.1")
    assert others[0].checkin()["action"] == "none"
    actions = audit_actions(fleet)
    assert actions.count("rollout.advance") == 2
    assert actions.count("rollout.complete") == 1

    # A device that joins later gets the completed rollout's release.
    late = fleet.device(version=None)
    answer = wait_for(lambda: (a := late.checkin())["action"] == "install" and a,
                      what="the late device's offer")
    assert answer["version"] == "1.1"
    assert answer["target"] == "hello/linux-x86_64/hello-1.1.tar.zst"
    assert answer["next_check_seconds"] > 0


def test_failures_pause_the_rollout_and_abort_rolls_back(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    devices = [fleet.device(version="1.0") for _ in range(12)]
    first = start_rollout(fleet, "1.1", "100", "--soak", "0", "--min-reports", "1")
    wait_for(lambda: (poll_round(devices), rollout(fleet, first)["state"] == "completed")[1],
             what="1.1 everywhere")
    assert fleet.push("1.2") == 0  # each release is pushed on its own
    bad = start_rollout(fleet, "1.2", "100", "--soak", "600", "--min-reports", "3",
                        "--max-failure-rate", "0.2")
    # One unfinished rollout per app and channel.
    second = cli("rollout", "start", "--server", fleet.server.url, "--app", "hello",
                 "--version", "1.2", "--channel", "stable", "--stages", "100", check=False,
                 token=fleet.tokens["publisher"])
    assert second.returncode == 1
    assert "rollout_conflict" in second.stderr
    offered = wait_for(lambda: [d for d in devices if d.checkin()["action"] == "install"],
                       what="offers of 1.2")
    healthy, failing = offered[:2], offered[2:]
    for device in healthy:
        device.install({"action": "install", "version": "1.2", "rollout_id": bad})
    for device in failing[:2]:
        device.install({"action": "install", "version": "1.2", "rollout_id": bad},
                       healthy=False)
    wait_for(lambda: rollout(fleet, bad)["state"] == "paused", what="the automatic pause")
    info = rollout(fleet, bad)
    assert "failure rate" in info["state_reason"]
    assert info["stats"]["total_failures"] == 2
    # Devices that failed it are never offered it again; paused: nobody else is either.
    assert all(d.checkin()["action"] == "none" for d in devices)
    failed_device = failing[0]
    failed_device.failed.clear()  # even if the device forgot, the server remembers
    cli("rollout", "resume", str(bad), "--server", fleet.server.url,
        token=fleet.tokens["publisher"])
    assert wait_for(lambda: "health failure" in failed_device.checkin()["reason"],
                    what="the failed device to be skipped")

    cli("rollout", "abort", str(bad), "--rollback", "--server", fleet.server.url,
        token=fleet.tokens["publisher"])

    def rolled_back() -> bool:
        answers = {d.device_id: d.checkin() for d in healthy}
        return all(a["action"] == "rollback" for a in answers.values())

    wait_for(rolled_back, what="rollback answers")
    for device in healthy:
        answer = device.checkin()
        assert (answer["version"], answer["rollout_id"]) == ("1.1", bad)
        device.install(answer)
        assert device.checkin()["action"] == "none"
    untouched = [d for d in devices if d not in healthy]
    assert all(d.checkin()["action"] == "none" for d in untouched)
    actions = audit_actions(fleet)
    assert actions.count("rollout.pause") == 1
    assert "rollout.abort" in actions


def test_status_explains_each_device(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    stable = [fleet.device(version="1.0", tags={"region": "eu"}) for _ in range(30)]
    beta = fleet.device(version="1.0", channel="beta", tags={"region": "eu"})
    us = fleet.device(version="1.0", tags={"region": "us"})
    rollout_id = start_rollout(fleet, "1.1", "20,100", "--soak", "3600",
                               "--group", "region=eu")
    status = json.loads(cli("rollout", "status", str(rollout_id), "--server", fleet.server.url,
                            "--json", token=fleet.tokens["viewer"]).stdout)
    by_id = {d["device_id"]: d for d in status["devices"]}
    assert "on channel beta" in by_id[beta.device_id]["reason"]
    assert "region=eu" in by_id[us.device_id]["reason"]
    targeted = [by_id[d.device_id] for d in stable if by_id[d.device_id]["targeted"]]
    left_out = [by_id[d.device_id] for d in stable if not by_id[d.device_id]["targeted"]]
    assert targeted
    assert left_out
    assert all(d["cohort"] < 20 and "offered 1.1" in d["reason"] for d in targeted)
    assert all(d["cohort"] >= 20 and "not below the stage's 20%" in d["reason"]
               for d in left_out)
    assert status["stats"]["stage_targeted"] == len(targeted)
    human = cli("rollout", "status", str(rollout_id), "--server", fleet.server.url,
                token=fleet.tokens["viewer"]).stdout
    assert "soaking until" in human
    assert "stage 1/2 at 20%" in human
