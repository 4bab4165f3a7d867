"""issue 11 §1 through the real server API: a rollback order belongs to its rollout.

Six devices, three tagged ``site=lab``; 1.1 rolled out to the lab, aborted with
rollback, then rolled out again to everyone. The old server sent every device that
ran 1.1 back (lab or not, new rollout or not), so devices looped install → rollback →
install, and the new rollout counted them as succeeded while they ran 1.0.
"""

from __future__ import annotations

from tests.integration.server.conftest import Fleet
from tests.integration.server.test_rollouts import poll_round, rollout, start_rollout
from tests.support.fleet import SimDevice, cli, wait_for


def answers(devices: list[SimDevice]) -> list[str]:
    """One round: each device checks in and does what it is told; the actions."""
    done = []
    for device in devices:
        answer = device.checkin()
        done.append(answer["action"])
        if answer["action"] != "none":
            device.install(answer)
    return done


def test_abort_with_rollback_then_a_new_rollout_converges(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    lab = [fleet.device(version="1.0", tags={"site": "lab"}) for _ in range(3)]
    rest = [fleet.device(version="1.0") for _ in range(3)]
    everyone = lab + rest
    first = start_rollout(fleet, "1.1", "100", "--soak", "600", "--group", "site=lab")
    wait_for(lambda: (poll_round(everyone), all(d.version == "1.1" for d in lab))[1],
             what="1.1 in the lab")
    assert all(d.version == "1.0" for d in rest)
    cli("rollout", "abort", str(first), "--rollback", "--server", fleet.server.url,
        token=fleet.tokens["publisher"])
    wait_for(lambda: (answers(everyone), all(d.version == "1.0" for d in lab))[1],
             what="the lab back on 1.0")

    second = start_rollout(fleet, "1.1", "100", "--soak", "600", "--min-reports", "6")
    wait_for(lambda: (answers(everyone), all(d.version == "1.1" for d in everyone))[1],
             what="1.1 everywhere")
    # Converged: nobody is told anything any more, round after round.
    for _ in range(3):
        assert answers(everyone) == ["none"] * 6
    assert all(d.version == "1.1" for d in everyone)
    stats = rollout(fleet, second)["stats"]
    assert (stats["total_reports"], stats["total_failures"]) == (6, 0)
