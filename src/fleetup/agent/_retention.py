"""Which kept release trees go: ``keep`` (how many) and ``keep_days`` (how old).

Pure: the inputs are values (kept versions, their ages, the current and the previous
release), the output the versions to remove; ``_install.prune_releases`` does the IO.

A tree's age is counted from when it **stopped being current**, not from when it was
installed: a release that ran for a year and was replaced yesterday is a one-day-old
rollback target. That moment is read from the history the agent already writes durably
(``.fleetup/history.jsonl``: each finished switch has ``from``, ``to`` and
``finished_at``), so no new state file is needed and nothing changes in the update
lifecycle: :func:`ages_from_history`. A tree the history never saw leave ``current``
(staged but never switched to, or kept from before the history) has no age and is never
pruned by age, only by count.

The age rule never removes the current release nor the previous one (the last release
committed before it, the rollback target), however old. The count rule is as it always
was: ``current`` and the newest others, ``keep`` in all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["ages_from_history", "previous_from_history", "releases_to_prune"]

_SWITCHED = frozenset({"committed", "rolled-back"})


def releases_to_prune(kept: Sequence[str], *, current: str | None, previous: str | None,
                      keep: int, keep_days: float | None,
                      ages: Mapping[str, float]) -> list[str]:
    """The versions to remove, in ``kept``'s order (``kept`` is oldest first).

    ``ages`` is days since each version stopped being current (missing: unknown, never
    pruned by age); ``keep_days`` ``None`` turns the age rule off.
    """
    others = [v for v in kept if v != current]
    budget = max(0, keep - (1 if current is not None else 0))
    by_count = set(others[:-budget] if budget else others)
    protected = {current, previous}
    by_age = {v for v in others if keep_days is not None and v not in protected
              and v in ages and ages[v] > keep_days}
    return [v for v in others if v in by_count | by_age]


def ages_from_history(records: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, float]:
    """Days since each version last stopped being current, from the agent's history.

    A record moved ``current`` from ``from`` to ``to`` if it committed or rolled back
    and the two differ; unreadable times are skipped (an unknown age keeps a tree).
    """
    stopped: dict[str, datetime] = {}
    for record in records:
        left, when = _switch_of(record)
        if left is not None and when is not None and (
                left not in stopped or when > stopped[left]):
            stopped[left] = when
    return {v: (now - when).total_seconds() / 86400 for v, when in stopped.items()}


def previous_from_history(records: Sequence[Mapping[str, Any]], current: str | None
                          ) -> str | None:
    """The release that was current just before ``current`` became current (the last
    committed before it), or ``None`` if the history does not say."""
    if current is None:
        return None
    for record in reversed(records):
        if record.get("result") in _SWITCHED and record.get("to") == current:
            left = record.get("from")
            if isinstance(left, str) and left != current:
                return left
    return None


def _switch_of(record: Mapping[str, Any]) -> tuple[str | None, datetime | None]:
    left, to = record.get("from"), record.get("to")
    if record.get("result") not in _SWITCHED or not isinstance(left, str) or left == to:
        return None, None
    try:
        when = datetime.fromisoformat(str(record.get("finished_at")))
    except ValueError:
        return left, None
    return left, when if when.tzinfo is not None else None
