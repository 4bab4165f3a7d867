"""One scenario end to end: a publisher repository, a real server, the simulated fleet,
an operator that starts the rollout (and answers a pause with ``abort --rollback``), a
sampler of the timeline, and the figures at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from benchmarks.fleet_sim._sim import APP, PLATFORM, Fleet, percentile
from benchmarks.fleet_sim.scenarios import Scenario
from fleetup.repository import ReleaseRequest, add_release, init_repo
from fleetup.server import _crud, init_store, make_engine, upgrade_database
from fleetup.server._auth import Role
from fleetup.server._models import Event

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Decision:
    t: float
    what: str  # "stage 2", "paused", "aborted", "completed", "killed", "restarted"


@dataclass
class Sample:
    t: float
    versions: dict[str, int]


@dataclass
class Outcome:
    """Everything a run measured; ``figures`` says it as rows beside their goals."""

    scenario: Scenario
    devices: int
    interval: float
    workers: int
    db: str
    fleet: Fleet
    rollout: dict[str, Any] = field(default_factory=dict)
    stage_one_size: int = 0
    decisions: list[Decision] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    stored: set[tuple[str, str]] = field(default_factory=set)
    stored_rows: int = 0
    crossed_at: float | None = None
    abort_at: float | None = None
    back_at: float | None = None
    run_seconds: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


class Server:
    """``fleetup server`` in its own process group, SIGKILL-able, same port on restart."""

    def __init__(self, data: Path, db_url: str, port: int, workers: int, env: dict[str, str]
                 ) -> None:
        self.data, self.db_url, self.port, self.workers = data, db_url, port, workers
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        log = (self.data.parent / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetup", "server", "--data", str(self.data), "--db",
             self.db_url, "--port", str(self.port), "--workers", str(self.workers),
             "--log-level", "warning"], cwd=ROOT, env={**os.environ, **self.env},
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fleetup server exited; see {log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("fleetup server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _publish(repo: Path, work: Path, version: str) -> None:
    src = work / f"src-{version}"
    src.mkdir(parents=True)
    (src / "VERSION").write_text(f"{version}\n")
    add_release(repo, ReleaseRequest(src=src, app=APP, version=version, platform=PLATFORM,
                                      channels=("stable",)))


def _tokens(db_url: str) -> dict[str, str]:
    engine = make_engine(db_url)
    upgrade_database(engine)
    tokens: dict[str, str] = {}
    with Session(engine) as session:
        for role in (Role.PUBLISHER, Role.VIEWER):
            _, tokens[role.value] = _crud.create_operator_token(
                session, role=role, name=f"sim-{role}", created_by="fleet_sim")
        _, tokens["enroll"] = _crud.create_enrollment_token(session, name="sim",
                                                            created_by="fleet_sim")
        session.commit()
    engine.dispose()
    return tokens


def _stored(db_url: str) -> tuple[set[tuple[str, str]], int]:
    engine = make_engine(db_url)
    with Session(engine) as session:
        rows = session.execute(select(Event.device_id, Event.event_id)).all()
    engine.dispose()
    return {(r[0], r[1]) for r in rows}, len(rows)


def run_scenario(scenario: Scenario, devices: int, interval: int, work: Path, *,
                 db_url: str | None = None, workers: int = 1, port: int) -> Outcome:
    """Set up, run the scenario, tear down; the outcome."""
    repo, data = work / "pub", work / "data"
    init_repo(repo)
    _publish(repo, work, "1.0")
    init_store(repo, data)
    _publish(repo, work, "1.1")
    db_url = db_url or f"sqlite:///{data / 'fleetup.db'}"
    tokens = _tokens(db_url)
    env = {"FLEETUP_SERVER_CHECKIN_INTERVAL": str(interval),
           "FLEETUP_SERVER_FLUSH_SECONDS": "0.5", "FLEETUP_SERVER_CACHE_SECONDS": "1",
           "FLEETUP_SERVER_ROLLOUT_TICK_SECONDS": "1",
           "FLEETUP_SERVER_AUTH_FAILURE_BURST": "1000000"}
    server = Server(data, db_url, port, workers, env)
    server.start()
    try:
        _push(repo, server.url, tokens["publisher"])
        outcome = asyncio.run(_drive(scenario, devices, interval, server, tokens, db_url))
    finally:
        server.stop()
    outcome.stored, outcome.stored_rows = _stored(db_url)
    outcome.load = os.getloadavg()
    return outcome


def _push(repo: Path, url: str, token: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleetup", "release", "push", "--repo", str(repo), "--app",
         APP, "--version", "1.1", "--server", url], cwd=ROOT, capture_output=True,
        text=True, env={**os.environ, "FLEETUP_TOKEN": token}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"release push failed: {done.stderr.strip()}")


async def _drive(scenario: Scenario, devices: int, interval: int, server: Server,
                 tokens: dict[str, str], db_url: str) -> Outcome:
    fleet = Fleet(server.url, devices, scenario.fail_share, interval)
    outcome = Outcome(scenario, devices, interval, server.workers, db_url.split(":")[0],
                      fleet)
    await fleet.enroll_all(tokens["enroll"])
    print(f"fleet_sim: {devices} devices enrolled in {fleet.seen.enroll_seconds:.0f} s; "
          f"rollout of 1.1 starts", file=sys.stderr)
    fleet.seen.start = time.monotonic()
    operator = Operator(server, tokens, outcome)
    await operator.start_rollout()
    tasks = [asyncio.create_task(fleet.run()), asyncio.create_task(operator.watch())]
    if scenario.kill_at_intervals is not None:
        tasks.append(asyncio.create_task(operator.kill_and_restart()))
    await asyncio.sleep(0)
    deadline = scenario.length_intervals * interval
    while fleet.seen.now() < deadline and not operator.finished():
        await asyncio.sleep(0.5)
    await asyncio.sleep(interval * 0.5 if operator.finished() else 0)
    fleet.stop.set()
    await asyncio.gather(*tasks)
    await fleet.client.aclose()
    outcome.run_seconds = fleet.seen.now()
    outcome.crossed_at = _crossing(outcome)
    return outcome


def _crossing(outcome: Outcome) -> float | None:
    """When the acknowledged outcomes first met the halt rule (rate over the maximum
    with enough reports), by the simulator's own count."""
    scenario, required = outcome.scenario, min(outcome.scenario.min_reports,
                                               max(outcome.stage_one_size, 1))
    failures = 0
    for reports, (t, _device, ok) in enumerate(sorted(outcome.fleet.seen.outcomes), 1):
        failures += not ok
        if reports >= required and failures / reports > scenario.max_failure_rate:
            return t
    return None


class Operator:
    """Starts the rollout, polls it, answers a pause with abort --rollback, samples."""

    def __init__(self, server: Server, tokens: dict[str, str], outcome: Outcome) -> None:
        self.server, self.outcome = server, outcome
        self.headers = {"Authorization": f"Bearer {tokens['publisher']}"}
        self.rollout_id = 0
        self.state = "active"
        self.down = False

    async def start_rollout(self) -> None:
        s = self.outcome.scenario
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.headers,
                                     timeout=30) as client:
            response = await client.post("/api/v1/rollouts", json={
                "app": APP, "version": "1.1", "channel": "stable", "stages": list(s.stages),
                "soak_seconds": round(s.soak_intervals * self.outcome.interval),
                "min_reports": s.min_reports, "max_failure_rate": s.max_failure_rate})
            response.raise_for_status()
            self.rollout_id = int(response.json()["id"])

    def finished(self) -> bool:
        if self.state == "completed":
            return all(d.version == "1.1" for d in self.outcome.fleet.devices)
        if not self.outcome.scenario.abort_on_pause:
            return self.state in ("paused", "aborted")
        return self.outcome.back_at is not None

    async def watch(self) -> None:
        fleet = self.outcome.fleet
        async with httpx.AsyncClient(base_url=self.server.url, headers=self.headers,
                                     timeout=5) as client:
            while not fleet.stop.is_set():
                self._sample()
                if not self.down:
                    await self._poll(client)
                self._check_back()
                await asyncio.sleep(0.25)

    def _sample(self) -> None:
        seen = self.outcome.fleet.seen
        self.outcome.samples.append(Sample(seen.now(), dict(self.outcome.fleet.versions())))

    async def _poll(self, client: httpx.AsyncClient) -> None:
        try:
            response = await client.get(f"/api/v1/rollouts/{self.rollout_id}")
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            return
        body = response.json()
        seen, outcome = self.outcome.fleet.seen, self.outcome
        if body["stage_index"] == 0 and body.get("stats"):
            outcome.stage_one_size = body["stats"]["stage_targeted"]
        if body["stage_index"] != seen.stage_index:
            seen.stage_index = body["stage_index"]
            outcome.decisions.append(Decision(seen.now(), f"{body['stage_percent']:g} %"))
        if body["state"] != self.state:
            self.state = body["state"]
            outcome.decisions.append(Decision(seen.now(), self.state))
            if self.state == "paused" and outcome.scenario.abort_on_pause:
                await self._abort(client)
        outcome.rollout = body

    async def _abort(self, client: httpx.AsyncClient) -> None:
        response = await client.post(f"/api/v1/rollouts/{self.rollout_id}/abort",
                                     json={"rollback": True, "reason": "fleet_sim"})
        response.raise_for_status()
        self.outcome.abort_at = self.outcome.fleet.seen.abort_at = \
            self.outcome.fleet.seen.now()

    def _check_back(self) -> None:
        outcome = self.outcome
        if outcome.abort_at is not None and outcome.back_at is None and \
                all(d.version == "1.0" for d in outcome.fleet.devices):
            outcome.back_at = outcome.fleet.seen.now()

    async def kill_and_restart(self) -> None:
        s, seen = self.outcome.scenario, self.outcome.fleet.seen
        assert s.kill_at_intervals is not None
        await asyncio.sleep(max(0.0, s.kill_at_intervals * self.outcome.interval -
                                seen.now()))
        self.down = True
        self.server.kill()
        self.outcome.decisions.append(Decision(seen.now(), "SIGKILL"))
        await asyncio.sleep(s.down_intervals * self.outcome.interval)
        await asyncio.to_thread(self.server.start)
        self.down = False
        self.outcome.decisions.append(Decision(seen.now(), "restarted"))


def figures(o: Outcome) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows of one outcome."""
    seen, iv = o.fleet.seen, o.interval
    rate = len(seen.checkin_latency) / o.run_seconds if o.run_seconds else 0.0
    ms = [x * 1000 for x in seen.checkin_latency]
    enroll_ms = [x * 1000 for x in seen.enroll_latency]
    # The period devices really checked in at: a client (or server) that cannot keep up
    # stretches it, and delays then say more in these intervals than in nominal ones.
    period = o.devices / rate if rate else float("nan")
    took = {d for _, d, _ in seen.offers}
    outside = {d for _, d, stage in seen.offers if stage > 0}
    rows = [
        ("enrollment", f"{o.devices / seen.enroll_seconds:.0f}/s, p99 "
         f"{percentile(enroll_ms, 0.99):.0f} ms", "no queue on a fleet re-enrolling"),
        ("check-ins", f"{rate:.0f}/s, p50 {percentile(ms, 0.5):.1f} ms, p99 "
         f"{percentile(ms, 0.99):.1f} ms ({seen.checkin_errors} failed)", "report"),
        ("effective check-in period", f"{period:.1f} s ({period / iv:.2f} × the nominal "
         f"{iv} s)", "1.00 × (else the client or server is saturated)"),
        ("devices that took 1.1", f"{len(took)} (stage 1 targets {o.stage_one_size}; "
         f"{len(outside)} offered in a later stage)",
         "none outside stage 1" if o.scenario.fail_share >= 0.1 else "report"),
        ("final state", f"{o.rollout.get('state', '?')}: {o.rollout.get('state_reason', '')}",
         ""),
    ]
    paused = next((d.t for d in o.decisions if d.what == "paused"), None)
    if o.crossed_at is not None and paused is not None:
        rows.append(("halt delay after the threshold was crossed",
                     _intervals(paused - o.crossed_at, iv, period), "≤ 2"))
        exposed = len({d for t, d, _ in seen.offers if t > o.crossed_at})
        rows.append(("devices offered 1.1 after the crossing", str(exposed), "0"))
    if paused is not None:
        before = len({d for t, d, _ in seen.offers if t <= paused})
        rows.append(("devices exposed before the halt (fixed threshold)", str(before),
                     "report"))
    if o.abort_at is not None:
        back = "not within the run" if o.back_at is None else \
            _intervals(o.back_at - o.abort_at, iv, period)
        rows.append(("abort --rollback until all on 1.0", back, "≤ 1"))
        rows.append(("check-ins on 1.1 after the abort not sent back",
                     f"{seen.late_answers} (of {len(seen.rollbacks)} rollback orders)", "0"))
    if o.scenario.kill_at_intervals is not None:
        lost = len(seen.sent - o.stored)
        extra = o.stored_rows - len(o.stored) + len(o.stored - seen.sent)
        rows.append(("events sent / stored across the SIGKILL",
                     f"{len(seen.sent)} / {o.stored_rows}: {lost} lost, {extra} doubled",
                     "0 lost, 0 doubled"))
    return rows


def _intervals(seconds: float, nominal: float, effective: float) -> str:
    return (f"{seconds / nominal:.2f} intervals ({seconds / effective:.2f} effective; "
            f"{seconds:.1f} s)")
