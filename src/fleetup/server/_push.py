"""The server's side of push: publish "check now" when an app's channel changes.

Every process tracks, from its rollout cache, what devices of each app and channel
could be told to do (:func:`push_state`); after each cache refresh, the process that
holds the rollout evaluator's lease publishes one message per app and channel where
something new appeared (:func:`push_changes`), so several server processes do not each
publish the same change. Changes made by another process reach the publishing one
with its next refresh (``cache_seconds``). NATS down: nothing is published and devices
find the change at their next poll, as they would without push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fleetup._push import connect, encode, import_nats, subject
from fleetup.server._background import cancel_all
from fleetup.server._rollouts import Offer, RolloutState

__all__ = ["PushState", "Pusher", "push_changes", "push_state"]

log = logging.getLogger("fleetup.server")

PushState = dict[tuple[str, str], frozenset[tuple[int, str, int]]]
"""Per (app, channel): each rollout that gives devices something to do, as
(id, state, stage index)."""


def push_state(offers: Mapping[str, Iterable[Offer]]) -> PushState:
    """What devices of each app and channel could be told to do, as a push sees it:
    active rollouts at their stage, and rollouts aborted with a rollback."""
    state: dict[tuple[str, str], set[tuple[int, str, int]]] = {}
    for app, app_offers in offers.items():
        for offer in app_offers:
            plan = offer.rollout
            if plan.state == RolloutState.ACTIVE or (
                    plan.state == RolloutState.ABORTED and plan.rollback):
                state.setdefault((app, plan.channel), set()).add(
                    (plan.id, plan.state.value, plan.stage_index))
    return {key: frozenset(value) for key, value in state.items()}


def push_changes(before: PushState, after: PushState) -> list[tuple[str, str, str]]:
    """(app, channel, reason) for each app and channel some device may now act on: a
    rollout started, advanced a stage, resumed, or was aborted with a rollback. A pause
    or a completion gives no device anything new to do: no push."""
    changes = []
    for key in sorted(after):
        added = after[key] - before.get(key, frozenset())
        if added:
            what = ", ".join(f"rollout {i} {state} at stage {stage + 1}"
                             for i, state, stage in sorted(added))
            changes.append((*key, what))
    return changes


class Pusher:
    """A NATS connection kept open in the background, and what is published on it."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._client: Any = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        self._client = await connect(self.url, self.name, self._stopping, log)
        if self._client is not None:
            log.info("pushing check-now messages to NATS %s", self.url)

    async def publish(self, changes: Iterable[tuple[str, str, str]]) -> int:
        """Publish each change; returns how many were published (0 while NATS is away)."""
        client, sent = self._client, 0
        failures = (import_nats().errors.Error, OSError, TimeoutError)
        for app, channel, reason in changes:
            if client is None or not client.is_connected:
                log.info("NATS is not connected: devices of %s/%s learn of it at their "
                         "next poll (%s)", app, channel, reason)
                continue
            try:
                await client.publish(subject(app, channel), encode(app, channel, reason))
                sent += 1
            except failures as e:  # a push is best effort
                log.warning("NATS publish for %s/%s failed: %s", app, channel, e)
        return sent

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await cancel_all([self._task])
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.drain()
