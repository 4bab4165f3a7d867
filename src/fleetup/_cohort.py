"""Rollout cohorts: where a device falls in [0, 100), from a stable hash.

The same function serves fleet rollouts (salt = rollout id) and static-mode phased
releases (salt = release target path). A device's cohort never changes for a given salt,
so a device that was in stays in as the percentage grows, and which devices go first
depends on their ids, not on who polls first. Different salts give independent cohorts,
so the same devices are not always the guinea pigs.
"""

from __future__ import annotations

import hashlib

__all__ = ["cohort_of", "in_cohort"]

_SCALE = 1 << 64


def cohort_of(device_id: str, salt: str) -> float:
    """The device's position in [0, 100) for this salt."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100 / _SCALE


def in_cohort(device_id: str, salt: str, percent: float) -> bool:
    """Whether a rollout at ``percent`` (0-100) reaches this device."""
    return cohort_of(device_id, salt) < percent
