"""The agent's side of push: hear "check now" over NATS and check in early.

A thread runs its own asyncio loop with a NATS subscription to this device's app and
channel (:func:`fleetup._push.subject`). A message only moves the daemon's next check
closer — to a random moment within ``push.jitter`` seconds — so what a device installs
is still decided by its check-in and verified by TUF: a forged or replayed message can
at most cause an early check-in. NATS unreachable: the device polls as usual while the
listener keeps trying to connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from fleetup._push import connect, decode, import_nats, subject
from fleetup.agent._config import AgentConfig

__all__ = ["PushListener"]

log = logging.getLogger("fleetup.agent")


class PushListener:
    """Calls ``check_in_within(seconds)`` for each "check now" heard, from its thread."""

    def __init__(self, config: AgentConfig, check_in_within: Callable[[float], None],
                 rng: random.Random | None = None) -> None:
        if config.push.url is None:
            raise ValueError("push is not configured")
        config.download.hosts.check(config.push.url)  # also checked at config load
        self.url = config.push.url
        self.subject = subject(config.app, config.channel)
        self.jitter = config.push.jitter
        self.name = f"fleetup-agent-{config.device_id or config.app}"
        self._check_in_within = check_in_within
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetup-push", daemon=True)
        self.subscribed = threading.Event()  # set once the subscription is live

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(timeout=5.0)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended in the meantime
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout=5.0)

    def heard(self, data: bytes) -> None:
        """One message arrived: check in within the jitter."""
        fields = decode(data)
        delay = self._rng.uniform(0.0, self.jitter)
        log.info("push: %s; checking in within %.1f s", fields.get("reason", "check now"),
                 delay)
        self._check_in_within(delay)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = stopping = asyncio.Event()
        self._ready.set()
        client: Any = await connect(self.url, self.name, stopping, log)
        if client is None:
            return

        async def on_message(message: Any) -> None:
            self.heard(message.data)

        try:
            # Kept by nats-py across reconnections.
            await client.subscribe(self.subject, cb=on_message)
            await client.flush(timeout=5)
            self.subscribed.set()
            log.info("push: listening on NATS %s (%s)", self.url, self.subject)
            await stopping.wait()
        except (import_nats().errors.Error, OSError, TimeoutError) as e:
            log.warning("push: cannot listen on NATS %s (%s); polling only", self.url, e)
        finally:
            await client.close()
