"""The fleet simulator's small case: 50 simulated devices, a release every device that
takes it fails, a real server. Outcomes only (no timing): the bad release stays in its
first stage, the rollout pauses by itself, and every event a device made is stored once."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fleet_sim._run import run_scenario
from benchmarks.fleet_sim.scenarios import Scenario

from tests.support.fleet import free_port

BAD = Scenario("bad-small", "fails health everywhere it goes", fail_share=1.0,
               stages=(20, 100), soak_intervals=3, min_reports=3, abort_on_pause=False,
               length_intervals=8)


def test_a_bad_release_stays_in_stage_one_and_pauses(tmp_path: Path) -> None:
    outcome = run_scenario(BAD, 50, 1, tmp_path, port=free_port())
    seen = outcome.fleet.seen

    assert outcome.rollout["state"] == "paused"
    assert "failure rate" in outcome.rollout["state_reason"]
    assert outcome.rollout["stage_index"] == 0
    assert [d.what for d in outcome.decisions] == ["paused"]
    took = {device for _, device, _ in seen.offers}
    # Cohorts hash a random key the server makes at enrolment: stage 1 holds about 10 of
    # the 50 devices, never all of them, and only its devices took the release.
    assert 3 <= len(took) <= outcome.stage_one_size < 50
    assert all(stage == 0 for _, _, stage in seen.offers)
    assert all(d.version == "1.0" for d in outcome.fleet.devices)  # each rolled back
    assert seen.sent == outcome.stored
    assert outcome.stored_rows == len(seen.sent)
