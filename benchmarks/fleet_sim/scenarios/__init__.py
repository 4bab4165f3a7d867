"""The simulator's scenarios, as Python data (one :class:`Scenario` each).

Times are in check-in intervals, so a scenario reads the same at any interval; the
failure shares are per device that takes the release (each draws once).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fail_share: float = 0.0  # devices that fail the new release's health check
    stages: tuple[float, ...] = (1, 10, 50, 100)
    soak_intervals: float = 1.0  # each stage soaks this many check-in intervals
    min_reports: int = 5
    max_failure_rate: float = 0.05
    abort_on_pause: bool = True  # the operator answers a pause with abort --rollback
    kill_at_intervals: float | None = None  # SIGKILL the server this long after start
    down_intervals: float = 1.0  # and restart it this long after the kill
    length_intervals: float = 8.0  # give up (and report) after this long


SCENARIOS = {s.name: s for s in (
    Scenario("healthy", "a good release: every stage soaks and the rollout completes"),
    Scenario("bad", "fails health on 30 % of the devices that take it", fail_share=0.30),
    Scenario("subtle", "raises the failure rate from 3 % to 6 % (fixed 5 % threshold)",
             fail_share=0.06, length_intervals=10.0),
    Scenario("kill", "a good release; the server is SIGKILLed mid-rollout and restarted",
             kill_at_intervals=2.0, down_intervals=1.0, length_intervals=9.0),
)}
