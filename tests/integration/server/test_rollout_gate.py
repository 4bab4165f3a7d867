"""issue 15 §2-§4 through the real server API: the control-group gate, a halt that
sends devices back, a verdict on the report that crosses the threshold, a revert after
100 %, and the operator's check-in interval.

The evaluation tick is an hour here: whatever halts a rollout within the test did so on
the report that crossed the threshold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.server.conftest import Fleet, build_fleet
from tests.integration.server.test_rollouts import audit_actions, rollout, start_rollout
from tests.support.fleet import SimDevice, cli, wait_for

NO_TICK = {"FLEETUP_SERVER_ROLLOUT_TICK_SECONDS": "3600"}


@pytest.fixture
def slow_fleet(tmp_path: Path, db_url: str) -> Iterator[Fleet]:
    built = build_fleet(tmp_path, db_url, env=NO_TICK)
    try:
        yield built
    finally:
        built.server.stop()


def act(device: SimDevice, healthy: bool = True) -> str:
    answer = device.checkin()
    if answer["action"] != "none":
        device.install(answer, healthy=healthy)
    return str(answer["action"])


def test_a_crossing_report_halts_and_on_halt_rollback_sends_devices_back(
        slow_fleet: Fleet) -> None:
    fleet = slow_fleet
    assert fleet.push("1.1") == 0
    good, bad = fleet.device(version="1.0"), fleet.device(version="1.0")
    rollout_id = start_rollout(fleet, "1.1", "100", "--soak", "600", "--min-reports", "1",
                               "--max-failure-rate", "0.2", "--on-halt", "rollback")
    assert act(good) == "install"
    assert good.version == "1.1"
    assert act(bad, healthy=False) == "install"  # its health-failed crosses 20 %
    wait_for(lambda: rollout(fleet, rollout_id)["state"] == "aborted",
             what="the halt on the crossing report")
    info = rollout(fleet, rollout_id)
    assert info["rollback"] is True
    assert info["on_halt"] == "rollback"
    assert "failure rate 50.0%" in info["state_reason"]
    assert audit_actions(fleet)[-2:] == ["rollout.pause", "rollout.abort"]
    wait_for(lambda: (act(good), good.version == "1.0")[1], what="the good device back")
    assert act(bad) == "none"
    assert bad.version == "1.0"


def test_the_control_gate_halts_on_an_increase_over_the_devices_still_on_1_0(
        slow_fleet: Fleet) -> None:
    fleet = slow_fleet
    assert fleet.push("1.1") == 0
    treated = [fleet.device(version="1.0", tags={"site": "new"}) for _ in range(3)]
    control = [fleet.device(version="1.0") for _ in range(20)]
    rollout_id = start_rollout(fleet, "1.1", "100", "--soak", "600", "--min-reports", "3",
                               "--max-failure-rate", "1", "--group", "site=new",
                               "--max-failure-increase", "0.02", "--confidence", "0.9")
    assert [act(d) for d in treated] == ["install"] * 3
    for device in control:
        device.report(device.event("health-report", version="1.0", details={"ok": True}))
    gate = rollout(fleet, rollout_id)["stats"]["gate"]
    assert (gate["verdict"], gate["treated"]["devices"], gate["control"]["devices"]) == (
        "wait", 0, 20)
    for device in treated:  # healthy at the update, failing an hour later
        device.report(device.event("health-report", version="1.1", details={"ok": False},
                                   reason="exit 3"))
    wait_for(lambda: rollout(fleet, rollout_id)["state"] == "paused",
             what="the gate's halt on the failing report")
    info = rollout(fleet, rollout_id)
    gate = info["stats"]["gate"]
    assert gate["treated"] == {"devices": 3, "failures": 3, "failure_rate": 1.0}
    assert gate["control"] == {"devices": 20, "failures": 0, "failure_rate": 0.0}
    assert gate["verdict"] == "halt"
    assert gate["p_value"] < 0.1
    assert "3/3" in info["state_reason"]
    assert "0/20" in info["state_reason"]
    assert all(act(d) == "none" for d in control)  # paused: nobody else gets it
    page = dashboard_page(fleet, f"/rollouts/{rollout_id}")
    assert 'id="control-gate"' in page
    groups = page[page.index('id="gate-groups"'):page.index("</table>", page.index(
        'id="gate-groups"'))]
    assert re.search(r"Failing</th><td>3</td><td>0</td>", groups)
    assert "halt" in page
    assert "z = " in page


def dashboard_page(fleet: Fleet, path: str) -> str:
    """Sign in as the viewer (the login form's CSRF token included) and read a page."""
    with httpx.Client(base_url=fleet.server.url, follow_redirects=False) as browser:
        form = browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        signed_in = browser.post("/login", data={"token": fleet.tokens["viewer"],
                                                 "csrf": csrf[1]})
        assert signed_in.status_code == 303, signed_in.text
        page = browser.get(path)
        assert page.status_code == 200
        return page.text


def test_a_completed_rollout_is_reverted_and_the_interval_is_the_operators(
        tmp_path: Path, db_url: str) -> None:
    fleet = build_fleet(tmp_path, db_url, env={"FLEETUP_SERVER_CHECKIN_JITTER": "0"},
                        args=("--checkin-interval", "7"))
    try:
        assert fleet.push("1.1") == 0
        devices = [fleet.device(version="1.0") for _ in range(2)]
        rollout_id = start_rollout(fleet, "1.1", "100", "--soak", "0", "--min-reports", "2")
        assert [act(d) for d in devices] == ["install"] * 2
        wait_for(lambda: rollout(fleet, rollout_id)["state"] == "completed",
                 what="completed")
        # The flag wins over FLEETUP_SERVER_CHECKIN_INTERVAL (60 in the test env).
        assert devices[0].checkin()["next_check_seconds"] == 7
        refused = cli("rollout", "abort", str(rollout_id), "--server", fleet.server.url,
                      token=fleet.tokens["publisher"], check=False)
        assert refused.returncode != 0
        assert "revert it" in refused.stderr
        cli("rollout", "revert", str(rollout_id), "--server", fleet.server.url,
            token=fleet.tokens["publisher"])
        assert rollout(fleet, rollout_id)["state"] == "aborted"
        wait_for(lambda: ([act(d) for d in devices],
                          all(d.version == "1.0" for d in devices))[1],
                 what="every device back on 1.0")
        assert [act(d) for d in devices] == ["none", "none"]
    finally:
        fleet.server.stop()
