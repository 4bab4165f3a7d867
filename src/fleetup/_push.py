"""Push over NATS: the fleet server tells devices "check now" instead of waiting a poll.

Optional (extra ``fleetup[push]``, nats-py). Polling stays the way devices learn what
to do — a push carries no instruction, only a nudge to check in early — so a lost,
late, doubled or forged message can at worst cause one extra check-in: NATS needs no
trust. One subject per app and channel: :func:`subject`.

The server publishes when what it would answer an app's channel changes (a rollout
created, advanced, paused, resumed, completed or aborted); the agent subscribes and
checks in after a random delay of up to ``push_jitter`` seconds, so a fleet told at
once does not check in at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fleetup.errors import ConfigError

__all__ = ["SUBJECT_PREFIX", "connect", "decode", "encode", "import_nats", "subject"]

SUBJECT_PREFIX = "fleetup.check"


def subject(app: str, channel: str) -> str:
    """The NATS subject of one app's channel: ``fleetup.check.<app>.<channel>``.

    Names may hold dots, which separate subject tokens in NATS; they become ``~``
    (a character names cannot hold, so two names never share a subject).
    """
    return f"{SUBJECT_PREFIX}.{app.replace('.', '~')}.{channel.replace('.', '~')}"


def encode(app: str, channel: str, reason: str) -> bytes:
    """The message: what changed, for logs; a device acts on its arrival alone."""
    return json.dumps({"app": app, "channel": channel, "reason": reason}).encode()


def decode(data: bytes) -> dict[str, Any]:
    """A message's fields, or an empty dict when it is not ours to read."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def import_nats() -> Any:
    """nats-py, or a clear error saying how to install it.

    Raises:
        ConfigError: nats-py is not installed.
    """
    try:
        import nats
    except ImportError:
        raise ConfigError("push over NATS needs nats-py: pip install 'fleetup[push]'") from None
    return nats


async def connect(url: str, name: str, stopping: asyncio.Event,
                  log: logging.Logger) -> Any | None:
    """A NATS connection to ``url``, retried with backoff until made or ``stopping``.

    Once connected, nats-py reconnects by itself after a loss, forever. Returns ``None``
    only when ``stopping`` was set first.

    Raises:
        ConfigError: nats-py is not installed.
    """
    nats = import_nats()
    failures = (nats.errors.Error, OSError, TimeoutError)
    delay = 1.0

    async def on_error(error: Exception) -> None:
        log.debug("NATS %s: %s", url, error)

    while not stopping.is_set():
        try:
            return await nats.connect(servers=[url], name=name, connect_timeout=2,
                                      allow_reconnect=True, max_reconnect_attempts=-1,
                                      reconnect_time_wait=2, error_cb=on_error)
        except failures as e:
            log.warning("NATS %s unreachable (%s); trying again in %.0f s", url,
                        str(e) or type(e).__name__, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 30.0)
    return None
