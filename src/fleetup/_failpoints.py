"""Fault injection for crash tests: die by SIGKILL at a named point.

``FLEETUP_FAILPOINTS="state:staged,stage:mid"`` makes the process kill itself, the way
a power cut would, the first time it reaches any named point. Used by ``tests/crash/``
to kill the agent in every state of the lifecycle deterministically; in production the
variable is unset and :func:`hit` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["hit"]

_VARIABLE = "FLEETUP_FAILPOINTS"


def hit(name: str) -> None:
    """SIGKILL this process if ``name`` is listed in ``FLEETUP_FAILPOINTS``."""
    armed = os.environ.get(_VARIABLE)
    if armed and name in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
