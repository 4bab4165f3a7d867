"""The server's background loops: periodic jobs and jobs woken on demand.

Every server process runs a few of these (flushing buffered check-ins, reloading caches,
evaluating rollouts and alert rules, re-signing metadata, delivering webhooks). A job
that fails is logged and tried again at its next turn; only cancellation stops a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable

__all__ = ["cancel_all", "every", "guarded", "when_woken"]

log = logging.getLogger("fleetup.server")

Job = Callable[[], Awaitable[object]]


async def guarded(job: Job, name: str) -> None:
    """Run ``job`` once; a failure is logged, not raised (cancellation is)."""
    try:
        await job()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s failed; trying again later", name)


async def every(seconds: float, job: Job, name: str) -> None:
    """Run ``job`` every ``seconds``, the first time after a random part of that, so
    several processes started together do not act in step."""
    await asyncio.sleep(seconds * random.uniform(0.1, 1.0))
    while True:
        await guarded(job, name)
        await asyncio.sleep(seconds)


async def when_woken(wake: asyncio.Event, seconds: float, job: Job, name: str) -> None:
    """Run ``job`` whenever ``wake`` is set, and at least every ``seconds``."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()
        await guarded(job, name)


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel the loops and wait until each has ended."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
