"""Simulated devices against a real ``fleetup server`` process, and what they saw.

Each device is an asyncio task speaking the device protocol over HTTP (one shared
``httpx.AsyncClient``, at most ``CONCURRENCY`` requests in flight): it enrolls, checks in
at the interval the server answers (with the agent's jitter), acts on install and
rollback orders by reporting what an agent reports, and keeps every event queued, with
its own id, until the server has acknowledged it — so a server that is down, killed or
shedding load loses nothing the device knows about. The simulator knows the truth (who
took what, when each outcome was acknowledged), the server's REST API says what it
decided, and the database says what it stored.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from fleetup._protocol import (
    ANSWER_FIELDS,
    CHECKIN_FIELDS,
    EVENT_FIELDS,
    CheckinAction,
    DeviceState,
    EventType,
)

CONCURRENCY = 64
BATCH = 200  # events per report, as the agent sends
POLL_JITTER = 0.1  # the agent's default poll_jitter
PLATFORM = "linux-x86_64"
APP = "hello"

(F_DEVICE, F_APP, F_PLATFORM, F_CHANNEL, F_TAGS, F_VERSION, F_STATE, F_KEPT,
 F_FAILED) = CHECKIN_FIELDS
A_ACTION, A_VERSION, _A_TARGET, A_ROLLOUT, A_REASON, A_NEXT, _A_FLAGS = ANSWER_FIELDS
(E_ID, E_TYPE, E_AT, E_VERSION, E_FROM, _E_UPDATE, E_ROLLOUT, E_REASON,
 _E_DETAILS) = EVENT_FIELDS


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Observed:
    """What the whole simulated fleet did and saw (times: seconds since the start)."""

    start: float = field(default_factory=time.monotonic)
    checkin_latency: list[float] = field(default_factory=list)
    checkin_errors: int = 0
    enroll_latency: list[float] = field(default_factory=list)
    enroll_seconds: float = 0.0
    sent: set[tuple[str, str]] = field(default_factory=set)  # (device, event id) made
    acked: set[tuple[str, str]] = field(default_factory=set)
    offers: list[tuple[float, str, int]] = field(default_factory=list)  # t, device, stage
    outcomes: list[tuple[float, str, bool]] = field(default_factory=list)  # acked t, ok
    rollbacks: list[tuple[float, str]] = field(default_factory=list)
    stage_index: int = 0  # the rollout's stage as last polled
    abort_at: float | None = None  # when the operator aborted with --rollback
    late_answers: int = 0  # check-ins on the new release after the abort not sent back

    def now(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Device:
    """One simulated agent: its state, and its queue of unacknowledged events."""

    device_id: str
    fails: bool  # does the new release fail its health check here
    version: str = "1.0"
    token: str = ""
    failed: list[str] = field(default_factory=list)
    queue: list[dict[str, Any]] = field(default_factory=list)
    outcome_ids: dict[str, bool] = field(default_factory=dict)  # event id -> healthy?

    def checkin_body(self) -> dict[str, Any]:
        return {F_DEVICE: self.device_id, F_APP: APP, F_PLATFORM: PLATFORM,
                F_CHANNEL: "stable", F_TAGS: {}, F_VERSION: self.version,
                F_STATE: str(DeviceState.IDLE), F_KEPT: [self.version],
                F_FAILED: self.failed}

    def event(self, kind: EventType, version: str, old: str, rollout: int | None,
              reason: str = "") -> dict[str, Any]:
        body = {E_ID: uuid.uuid4().hex, E_TYPE: str(kind),
                E_AT: datetime.now(UTC).isoformat(), E_VERSION: version, E_FROM: old,
                E_ROLLOUT: rollout, E_REASON: reason}
        self.queue.append(body)
        return body

    def install(self, version: str, rollout: int | None) -> None:
        """The events an agent reports for one update (tests/support/fleet.py SimDevice,
        with the download and staging steps a real agent reports too)."""
        old = self.version
        for kind in (EventType.DOWNLOAD_STARTED, EventType.DOWNLOAD_FINISHED,
                     EventType.STAGED, EventType.SWITCHED):
            self.event(kind, version, old, rollout)
        if self.fails:
            ended = self.event(EventType.HEALTH_FAILED, version, old, rollout, "exit 3")
            self.event(EventType.ROLLED_BACK, old, version, rollout)
            self.failed.append(version)
        else:
            self.event(EventType.HEALTH_PASSED, version, old, rollout)
            ended = self.event(EventType.COMMITTED, version, old, rollout)
            self.version = version
        self.outcome_ids[ended[E_ID]] = not self.fails

    def rollback(self, version: str, rollout: int | None, reason: str) -> None:
        self.event(EventType.ROLLBACK, version, self.version, rollout, reason)
        self.version = version


class Fleet:
    """N devices against one server URL; ``run`` until ``stop`` is set."""

    def __init__(self, url: str, devices: int, fail_share: float, interval: float,
                 seed: int = 1) -> None:
        rng = random.Random(seed)
        self.url, self.interval = url, interval
        self.devices = [Device(f"sim{i:06d}", rng.random() < fail_share)
                        for i in range(devices)]
        self.seen = Observed()
        self.stop = asyncio.Event()
        self.gate = asyncio.Semaphore(CONCURRENCY)
        self.client = httpx.AsyncClient(
            base_url=url, timeout=30, limits=httpx.Limits(max_connections=CONCURRENCY))

    async def post(self, device: Device, path: str, body: dict[str, Any]
                   ) -> tuple[httpx.Response, float]:
        headers = {"Authorization": f"Bearer {device.token}"} if device.token else {}
        async with self.gate:
            started = time.perf_counter()
            response = await self.client.post(f"/api/v1/devices/{path}", json=body,
                                              headers=headers)
            return response, time.perf_counter() - started

    async def enroll_all(self, enrollment_token: str) -> None:
        started = time.monotonic()
        await asyncio.gather(*(self._enroll(d, enrollment_token) for d in self.devices))
        self.seen.enroll_seconds = time.monotonic() - started

    async def _enroll(self, device: Device, enrollment_token: str) -> None:
        body = {"enrollment_token": enrollment_token, "device_id": device.device_id,
                "app": APP, "platform": PLATFORM, "channel": "stable", "tags": {}}
        while True:
            try:
                response, took = await self.post(device, "enroll", body)
            except httpx.HTTPError:
                await asyncio.sleep(1)
                continue
            if response.status_code == 201:
                device.token = response.json()["device_token"]
                self.seen.enroll_latency.append(took)
                return
            await asyncio.sleep(1)  # shed (503) or rate-limited: try again

    async def run(self) -> None:
        await asyncio.gather(*(self._live(d) for d in self.devices))

    async def _live(self, device: Device) -> None:
        wait = random.uniform(0, self.interval)  # devices do not start in step
        while not await self._sleep(wait):
            wait = await self._round(device)
        await self.flush(device)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True as soon as the run is over."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _round(self, device: Device) -> float:
        """Report what is queued, check in, obey; the seconds until the next round."""
        await self.flush(device)
        try:
            response, took = await self.post(device, "checkin", device.checkin_body())
        except httpx.HTTPError:
            self.seen.checkin_errors += 1
            return self.interval  # the server is down: try again at the next poll
        if response.status_code != 200:
            self.seen.checkin_errors += 1
            return self.interval
        self.seen.checkin_latency.append(took)
        answer = response.json()
        self._obey(device, answer)
        await self.flush(device)
        base = float(answer.get(A_NEXT) or self.interval)
        return base + random.uniform(-POLL_JITTER, POLL_JITTER) * base

    def _obey(self, device: Device, answer: dict[str, Any]) -> None:
        action, rollout = answer.get(A_ACTION), answer.get(A_ROLLOUT)
        if self.seen.abort_at is not None and device.version != "1.0" and \
                action != CheckinAction.ROLLBACK:
            self.seen.late_answers += 1
        if action == CheckinAction.INSTALL:
            self.seen.offers.append((self.seen.now(), device.device_id,
                                     self.seen.stage_index))
            device.install(answer[A_VERSION], rollout)
        elif action == CheckinAction.ROLLBACK:
            self.seen.rollbacks.append((self.seen.now(), device.device_id))
            device.rollback(answer[A_VERSION], rollout, answer.get(A_REASON, ""))

    async def flush(self, device: Device) -> None:
        """Send queued events, oldest first; keep whatever the server did not take."""
        while device.queue:
            batch = device.queue[:BATCH]
            for event in batch:
                self.seen.sent.add((device.device_id, event[E_ID]))
            try:
                response, _ = await self.post(device, "events", {"events": batch})
            except httpx.HTTPError:
                return
            if response.status_code != 200:
                return
            body = response.json()
            taken = set(body["accepted"]) | set(body["duplicates"])
            device.queue = [e for e in device.queue if e[E_ID] not in taken]
            for event_id in taken:
                self.seen.acked.add((device.device_id, event_id))
                if event_id in device.outcome_ids:
                    self.seen.outcomes.append((self.seen.now(), device.device_id,
                                               device.outcome_ids.pop(event_id)))
            if not taken:
                return

    def versions(self) -> Counter[str]:
        return Counter(d.version for d in self.devices)
