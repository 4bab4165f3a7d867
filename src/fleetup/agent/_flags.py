"""Feature flags from the fleet server, as the app and modules see them.

Flags are configuration, not signed code: the agent checks their shape (a bounded map
of short names to JSON scalars) and hands them on, in ``.fleetup/flags.json``, the
status API (``GET /api/updates/flags``) and the modules' ``on_flags(flags)`` hook. It
never reads them when choosing what to install, whatever they are named.
"""

from __future__ import annotations

import math
import re

__all__ = ["FLAGS_FILE", "MAX_FLAGS", "Flags", "clean_flags"]

Flags = dict[str, str | int | float | bool]
FLAGS_FILE = "flags.json"
MAX_FLAGS = 200
MAX_TEXT = 1000
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int) and abs(value) <= 2**53


def clean_flags(value: object) -> Flags | None:
    """The flags of a check-in answer, or ``None`` if the answer's ``flags`` is missing
    or malformed (then the ones already kept stay)."""
    if not isinstance(value, dict) or len(value) > MAX_FLAGS:
        return None
    if not all(isinstance(k, str) and _NAME.fullmatch(k) and _scalar(v)
               for k, v in value.items()):
        return None
    return {str(k): v for k, v in sorted(value.items())}
