"""The server process's live state: caches, the check-in buffer, and background work.

Check-ins are the hot path and touch no database in the common case:

- device tokens are looked up in an in-process cache (preloaded at start, up to
  ``token_cache_preload`` devices; a miss goes to the database once; unknown tokens
  are remembered briefly so a bad token cannot make every request a query; tokens
  replaced by a re-enrollment are dropped on the next refresh);
- the decision comes from :func:`_rollouts.decide` over rollouts cached in process
  (reloaded every ``cache_seconds`` and right after a local change);
- what a device reports (version, state, last seen ...) goes into a buffer that a
  background task writes every ``flush_seconds`` as one batched UPDATE. A server killed
  with SIGKILL loses at most that long of last-seen updates, never an event: events
  are written before they are acknowledged.

Background tasks (every process runs them; the database keeps them single):

- rollout evaluation: :func:`_rollouts.stage_verdict` per active rollout, applied with
  ``UPDATE ... WHERE revision = :seen`` so a stage advances (and is audited) once;
- metadata re-signing under a database lease, so one process re-signs at a time and
  the others find it already done.

All cache mutations happen on the event loop's thread; database work runs in worker
threads (``asyncio.to_thread``) and hands its result back to the loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleetup._cohort import cohort_of
from fleetup.errors import FleetupError, ServerAPIError
from fleetup.server import _crud
from fleetup.server._auth import TokenKind, hash_token
from fleetup.server._background import cancel_all, every, when_woken
from fleetup.server._flags import FlagValue, load_flags, resolve
from fleetup.server._models import Device, Rollout, utcnow
from fleetup.server._operations import evaluate_rollout
from fleetup.server._push import Pusher, PushState, push_changes, push_state
from fleetup.server._rollouts import (
    Action,
    Decision,
    DeviceView,
    Offer,
    RolloutPlan,
    RolloutState,
    decide,
)
from fleetup.server._schemas import CheckinRequest, CheckinResponse
from fleetup.server._settings import Settings
from fleetup.server._store import ReleaseStore

__all__ = ["DeviceEntry", "Fleet"]

log = logging.getLogger("fleetup.server")

_UNKNOWN_TOKEN_SECONDS = 5.0
_UNKNOWN_TOKEN_MAX = 10_000
_RESIGN_LEASE = "repo-resign"
_EVALUATOR_LEASE = "rollout-evaluator"
# How soon a device asked to check in (without push) is told to check again.
CHECK_SOON_SECONDS = 5
_SCOPE_SECONDS = 30.0


@dataclass(slots=True)
class DeviceEntry:
    """A device as the check-in path knows it."""

    id: str
    app: str
    token_hash: str
    version: str | None
    previous_version: str | None
    # What the database holds for app, platform, channel and tags (None: unknown), so
    # a check-in writes them only when they change.
    profile: tuple[str, str, str, frozenset[tuple[str, str]]] | None = None
    # The state last queued for writing, and when (monotonic): an unchanged check-in
    # is written only once per ``last_seen_resolution``.
    state: str | None = None
    queued_at: float = float("-inf")
    # Operator actions (``fleetup device move|check``): the channel decisions use
    # instead of the reported one, and whether the next answer says "check again soon".
    channel_override: str | None = None
    check_soon: bool = False
    cohort_key: str | None = None
    # ``fleetup device rollback|pin``, and the kept releases last written.
    rollback_to: str | None = None
    pinned: str | None = None
    rolled_back_from: str | None = None
    kept: frozenset[str] | None = None

    @classmethod
    def of(cls, row: Device) -> DeviceEntry:
        tags = frozenset((str(k), str(v)) for k, v in (row.tags or {}).items())
        asked = row.check_requested_at
        return cls(row.id, row.app, row.token_hash, row.version, row.previous_version,
                   (row.app, row.platform, row.channel, tags),
                   channel_override=row.channel_override,
                   check_soon=asked is not None and (row.last_seen is None
                                                     or asked > row.last_seen),
                   cohort_key=row.cohort_key, rollback_to=row.rollback_to,
                   pinned=row.pinned_version, rolled_back_from=row.rolled_back_from,
                   kept=None if row.kept is None else frozenset(map(str, row.kept)))


class Fleet:
    """One server process's caches and background tasks over the shared database."""

    def __init__(self, settings: Settings, engine: Engine,
                 clock: Callable[[], datetime] = utcnow, pusher: Pusher | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        self.store = ReleaseStore(settings.data_dir)
        self.clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.offers: dict[str, list[Offer]] = {}
        self.flags: dict[str, list[FlagValue]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        # Install answers given since the last flush, per (rollout id, device id).
        self.pending_offers: dict[tuple[int, str], dict[str, Any]] = {}
        self.inflight = 0
        self._tokens: dict[str, DeviceEntry] = {}
        self._token_of: dict[str, str] = {}
        self._unknown: dict[str, float] = {}
        self._refresh_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scopes: dict[int, tuple[float, list[float]]] = {}
        self.pusher = pusher
        self._pushed: PushState | None = None  # the state last seen, for push changes
        self._leading = False  # holds the rollout evaluator's lease: pushes for all

    # -- devices --------------------------------------------------------------------

    async def device_for(self, token: str) -> DeviceEntry | None:
        """The device holding ``token``, or ``None`` if the token is unknown.

        Tokens are found by their SHA-256, so lookup timing says nothing usable about
        the token itself.
        """
        if not token.startswith(TokenKind.DEVICE.value):
            return None
        digest = hash_token(token)
        entry = self._tokens.get(digest)
        if entry is not None:
            return entry
        if self._unknown.get(digest, 0.0) > time.monotonic():
            return None
        entry = await asyncio.to_thread(self._load_device, digest)
        if entry is None:
            if len(self._unknown) >= _UNKNOWN_TOKEN_MAX:
                self._unknown.clear()
            self._unknown[digest] = time.monotonic() + _UNKNOWN_TOKEN_SECONDS
            return None
        self.remember(entry)
        return entry

    def _load_device(self, digest: str) -> DeviceEntry | None:
        with self.sessions() as session:
            row = _crud.find_device_by_token(session, token_hash=digest)
            return None if row is None else DeviceEntry.of(row)

    def _preload_tokens(self) -> list[DeviceEntry]:
        limit = self.settings.token_cache_preload
        if not limit:
            return []
        with self.sessions() as session:
            return [DeviceEntry.of(row) for row in _crud.device_tokens(session, limit=limit)]

    def remember(self, entry: DeviceEntry) -> None:
        """Cache a device's token (replacing any older token of the same device)."""
        old = self._token_of.get(entry.id)
        if old is not None and old != entry.token_hash:
            self._tokens.pop(old, None)
        self._tokens[entry.token_hash] = entry
        self._token_of[entry.id] = entry.token_hash
        self._unknown.pop(entry.token_hash, None)

    def checkin(self, device: DeviceEntry, request: CheckinRequest) -> CheckinResponse:
        """Answer a check-in from the caches and buffer its report; no IO.

        Raises:
            ServerAPIError: (403) the body names another device than the token's.
        """
        if request.device_id != device.id:
            raise ServerAPIError("the device id does not match the device token",
                                 "device_mismatch", 403)
        moved = request.version != device.version
        if moved:
            if device.version is not None:
                device.previous_version = device.version
            device.version = request.version
        profile = (request.app, request.platform, request.channel,
                   frozenset(request.tags.items()))
        kept = frozenset(request.kept)
        changed = profile != device.profile or kept != device.kept
        device.profile, device.kept = profile, kept
        if device.rollback_to is not None and device.rollback_to == request.version:
            device.rollback_to = None  # the order is done; the flush clears the row
            changed = True
        now = time.monotonic()
        quiet = not (moved or changed or request.state != device.state)
        if not quiet or now - device.queued_at >= self.settings.last_seen_resolution:
            self._queue(device, request, changed, now)
        channel = device.channel_override or request.channel
        view = DeviceView(device.id, request.app, request.platform, channel,
                          request.version, request.tags, frozenset(request.failed),
                          device.previous_version, device.cohort_key,
                          rollback_to=device.rollback_to, pinned=device.pinned,
                          rolled_back_from=device.rolled_back_from)
        decision = decide(view, self.offers.get(request.app, ()))
        if decision.action is Action.INSTALL and decision.rollout_id is not None:
            self._offered(decision.rollout_id, device, request.app)
        answer = self._response(decision)
        # Configuration for the app, beside the decision and never part of it.
        answer.flags = resolve(self.flags.get(request.app, ()), device_id=device.id,
                               channel=channel, tags=request.tags)
        if device.check_soon:  # asked for by an operator: once, then the usual interval
            device.check_soon = False
            answer.next_check_seconds = min(answer.next_check_seconds, CHECK_SOON_SECONDS)
        return answer

    def forget(self, token_hash: str) -> None:
        """Drop a device from this process's token cache: its next request reloads it
        (after an operator changed it, or revoked the token)."""
        entry = self._tokens.pop(token_hash, None)
        if entry is not None and self._token_of.get(entry.id) == token_hash:
            del self._token_of[entry.id]

    def _offered(self, rollout_id: int, device: DeviceEntry, app: str) -> None:
        """Buffer the offer: only offered devices count towards the rollout's health and
        are sent back by an abort with rollback."""
        key = (rollout_id, device.id)
        if key in self.pending_offers:
            return
        stage = next((o.rollout.stage_index for o in self.offers.get(app, ())
                      if o.rollout.id == rollout_id), 0)
        self.pending_offers[key] = {
            "rollout_id": rollout_id, "device_id": device.id, "stage_index": stage,
            "from_version": device.version, "offered_at": self.clock()}

    def _queue(self, device: DeviceEntry, request: CheckinRequest, changed: bool,
               now: float) -> None:
        """Buffer the device's report for the next batched write."""
        device.state, device.queued_at = request.state, now
        previous = self.pending.get(device.id)
        self.pending[device.id] = {
            "id": device.id, "app": request.app, "platform": request.platform,
            "channel": request.channel, "tags": dict(request.tags),
            "version": request.version, "previous_version": device.previous_version,
            "kept": sorted(request.kept), "rollback_to": device.rollback_to,
            "state": request.state, "last_seen": self.clock(),
            "profile_changed": changed or bool(previous and previous["profile_changed"])}

    def _response(self, decision: Decision) -> CheckinResponse:
        settings = self.settings
        spread = settings.checkin_interval * settings.checkin_jitter
        next_check = settings.checkin_interval + random.uniform(-spread, spread)
        return CheckinResponse(
            action=decision.action.value, version=decision.version, target=decision.target,
            rollout_id=decision.rollout_id, reason=decision.reason,
            next_check_seconds=max(1, round(next_check)))

    def should_shed(self) -> bool:
        """Whether a new check-in should be refused (503 + Retry-After) to shed load."""
        return (self.inflight >= self.settings.max_inflight_checkins
                or len(self.pending) >= self.settings.max_pending_updates)

    def rollout_for_event(self, app: str, version: str | None) -> int | None:
        """The rollout an event without a rollout id belongs to: the unfinished one
        of the device's app that rolls out that version, if exactly one does."""
        if version is None:
            return None
        ids = [o.rollout.id for o in self.offers.get(app, ())
               if o.rollout.version == version
               and o.rollout.state in (RolloutState.ACTIVE, RolloutState.PAUSED)]
        return ids[0] if len(ids) == 1 else None

    def changed(self) -> None:
        """Something rollouts depend on changed here: reload the caches now.

        Safe to call from any thread (sync routes run in worker threads).
        """
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._refresh_now.set)

    def remember_soon(self, entry: DeviceEntry) -> None:
        """:meth:`remember` from a worker thread: done on the event loop's thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.remember, entry)

    # -- background -----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for entry in await asyncio.to_thread(self._preload_tokens):
            self.remember(entry)
        # The preloaded cache is long-lived: keep the cyclic GC from scanning it at every
        # full collection (with 100k devices such a scan stalls every request).
        gc.freeze()
        if self.pusher is not None:
            await self.pusher.start()
            # Take the lead now if nobody holds it, rather than at the first evaluation:
            # changes made before then would not be pushed.
            self._leading = await asyncio.to_thread(self._take_lead)
        await self.refresh()
        s = self.settings
        self._tasks = [
            asyncio.create_task(every(s.flush_seconds, self.flush, "flush")),
            asyncio.create_task(when_woken(self._refresh_now, s.cache_seconds, self.refresh,
                                           "refresh")),
            asyncio.create_task(every(s.rollout_tick_seconds, self.evaluate, "rollouts")),
            asyncio.create_task(every(s.resign_check_seconds, self.resign, "re-sign")),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        await self.flush()
        if self.pusher is not None:
            await self.pusher.stop()

    async def flush(self) -> None:
        """Write the buffered check-in reports and offers in one batch (kept for later
        on error)."""
        if not self.pending and not self.pending_offers:
            return
        rows, self.pending = list(self.pending.values()), {}
        offers, self.pending_offers = self.pending_offers, {}
        try:
            await asyncio.to_thread(self._write_checkins, rows, list(offers.values()))
        except BaseException:
            for row in rows:
                self.pending.setdefault(row["id"], row)
            for key, offer in offers.items():
                self.pending_offers.setdefault(key, offer)
            raise

    def _write_checkins(self, rows: list[dict[str, Any]],
                        offers: list[dict[str, Any]] | None = None) -> None:
        with self.sessions() as session:
            _crud.flush_checkins(session, rows=rows)
            _crud.record_offers(session, offers=offers or [])
            session.commit()

    async def refresh(self) -> None:
        offers, revoked, flags = await asyncio.to_thread(self._load_caches)
        self.offers, self.flags = offers, flags
        if self.pusher is not None:
            state = push_state(offers)
            if self._pushed is not None and self._leading:
                await self.pusher.publish(push_changes(self._pushed, state))
            self._pushed = state
        for digest in revoked:
            entry = self._tokens.pop(digest, None)
            if entry is not None and self._token_of.get(entry.id) == digest:
                del self._token_of[entry.id]

    def _load_caches(self) -> tuple[dict[str, list[Offer]], list[str],
                                    dict[str, list[FlagValue]]]:
        # Replaced tokens of the last minute, every time: a revocation committed late
        # (clock skew, a slow transaction) is still seen, and dropping twice is harmless.
        since = utcnow() - timedelta(seconds=60)
        with self.sessions() as session:
            return (_crud.load_offers(session), _crud.revoked_since(session, since=since),
                    load_flags(session))

    async def evaluate(self) -> None:
        if await asyncio.to_thread(self.evaluate_rollouts):
            self.changed()

    def evaluate_rollouts(self) -> bool:
        """Advance, complete or pause each active rollout as its health says.

        One process at a time evaluates (a database lease, renewed each round, taken
        over by another process when its holder dies); each change is also applied
        only if the rollout is still at the revision it was judged from, so even two
        evaluators could not apply a stage twice. Returns whether this process
        changed any rollout.
        """
        changed = False
        now = self.clock()
        # Renewed every round; after a crash another process takes over within 3 rounds.
        self._leading = self._take_lead()
        if not self._leading:
            return False
        with self.sessions() as session:
            for row in _crud.list_rollouts(session, state=RolloutState.ACTIVE.value):
                plan = _crud.plan_of(row)
                changed |= evaluate_rollout(session, plan, row.revision,
                                            self._scope_cohorts(session, plan), now)
        return changed

    def evaluate_reported(self, rollout_ids: set[int]) -> None:
        """Judge these rollouts soon, not at the next tick: a stored report may have
        crossed a threshold, and waiting for the tick (and a cache refresh) lets more
        devices take a bad release. Safe to call from any thread; does not wait.

        This process's buffered offers are written first (only offered devices count,
        and the reporting device was most likely offered the release here).
        """
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._judge_reported(set(rollout_ids)),
                                             self._loop)

    async def _judge_reported(self, rollout_ids: set[int]) -> None:
        try:
            await self.flush()
            await asyncio.to_thread(self.judge_now, rollout_ids)
        except Exception:  # the tick judges it again; a report must not be lost for this
            log.exception("judging rollouts %s after a report failed", sorted(rollout_ids))

    def judge_now(self, rollout_ids: set[int]) -> None:
        """The same judgement as the tick (:func:`_operations.evaluate_rollout`), without
        the lease: each change applies only at the revision it was judged from."""
        changed = False
        with self.sessions() as session:
            for rollout_id in sorted(rollout_ids):
                row = session.get(Rollout, rollout_id)
                if row is None or row.state != RolloutState.ACTIVE.value:
                    continue
                plan = _crud.plan_of(row)
                changed |= evaluate_rollout(session, plan, row.revision,
                                            self._scope_cohorts(session, plan), self.clock())
        if changed:
            self.changed()

    def gated_rollouts(self, app: str) -> set[int]:
        """Active rollouts of ``app`` with a control-group gate (from the cache)."""
        return {o.rollout.id for o in self.offers.get(app, ())
                if o.rollout.state == RolloutState.ACTIVE
                and o.rollout.max_failure_increase is not None}

    def _take_lead(self) -> bool:
        ttl = timedelta(seconds=max(1.0, 3 * self.settings.rollout_tick_seconds))
        with self.sessions() as session:
            return _crud.acquire_lease(session, name=_EVALUATOR_LEASE, holder=self.holder,
                                       ttl=ttl)

    def _scope_cohorts(self, session: Session, plan: RolloutPlan) -> list[float]:
        """Cohorts of the devices a rollout can reach, re-read every ``_SCOPE_SECONDS``
        (registrations change slowly; a large fleet makes this the costly query)."""
        cached = self._scopes.get(plan.id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        platforms = _crud.release_platforms(session, app=plan.app, version=plan.version)
        cohorts = [cohort_of(key, plan.salt)
                   for key in _crud.rollout_scope(session, plan=plan, platforms=platforms)]
        self._scopes[plan.id] = (time.monotonic() + _SCOPE_SECONDS, cohorts)
        return cohorts

    async def resign(self) -> None:
        await asyncio.to_thread(self.resign_metadata)

    def resign_metadata(self) -> list[str]:
        """Re-sign snapshot/timestamp if due, in one process at a time."""
        if not self.store.exists():
            return []
        with self.sessions() as session:
            if not _crud.acquire_lease(session, name=_RESIGN_LEASE, holder=self.holder,
                                       ttl=timedelta(minutes=5)):
                return []
            try:
                roles = self.store.resign_if_due(self.settings.resign_remaining_share,
                                                 self.clock())
                if roles:
                    _crud.add_audit(session, actor="system", action="repo.resign",
                                    details={"roles": roles, "holder": self.holder})
                    session.commit()
                return roles
            except FleetupError as e:
                log.warning("re-signing the repository metadata failed: %s", e)
                return []
            finally:
                _crud.release_lease(session, name=_RESIGN_LEASE, holder=self.holder)
