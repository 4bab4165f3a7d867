"""Retention: ``keep`` and ``keep_days`` as a pure decision, and ages read from history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fleetup.agent._retention import (
    ages_from_history,
    previous_from_history,
    releases_to_prune,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@st.composite
def situations(draw: st.DrawFn) -> dict[str, object]:
    count = draw(st.integers(0, 8))
    kept = [f"1.{i}" for i in range(count)]
    current = draw(st.sampled_from([None, *kept]))
    previous = draw(st.sampled_from([None, *kept]))
    ages = {v: draw(st.floats(0, 400)) for v in kept if draw(st.booleans())}
    return {"kept": kept, "current": current, "previous": previous, "ages": ages,
            "keep": draw(st.integers(1, 10)),
            "keep_days": draw(st.none() | st.floats(0.1, 365))}


@given(situations())
def test_never_the_current_one_nor_by_age_the_previous(case: dict[str, object]) -> None:
    pruned = releases_to_prune(**case)  # type: ignore[arg-type]
    by_count = releases_to_prune(**{**case, "keep_days": None})  # type: ignore[arg-type]
    assert case["current"] not in pruned
    # The age rule adds removals but never the previous release: only the count rule
    # (a keep too small to hold it) can take that.
    assert (case["previous"] in pruned) == (case["previous"] in by_count)
    assert set(by_count) <= set(pruned)


@given(situations())
def test_every_removal_is_over_the_count_or_older_than_keep_days(case: dict[str, object]
                                                                  ) -> None:
    pruned = releases_to_prune(**case)  # type: ignore[arg-type]
    by_count = releases_to_prune(**{**case, "keep_days": None})  # type: ignore[arg-type]
    ages, keep_days = case["ages"], case["keep_days"]
    for version in set(pruned) - set(by_count):
        assert keep_days is not None
        assert ages[version] > keep_days  # type: ignore[index]
    for version, age in ages.items():  # type: ignore[attr-defined]
        if keep_days is not None and age > keep_days and version not in (
                case["current"], case["previous"]):
            assert version in pruned


def test_with_a_large_keep_only_age_prunes_and_unknown_ages_stay() -> None:
    kept = ["1.0", "1.1", "1.2", "1.3", "1.4"]
    ages = {"1.0": 90.0, "1.1": 40.0, "1.2": 10.0, "1.3": 50.0}
    assert releases_to_prune(kept, current="1.4", previous="1.3", keep=10, keep_days=30,
                             ages=ages) == ["1.0", "1.1"]
    assert releases_to_prune(kept, current="1.4", previous="1.3", keep=10, keep_days=None,
                             ages=ages) == []


def test_the_count_rule_is_unchanged() -> None:
    assert releases_to_prune(["1.0", "1.1", "1.2"], current="1.0", previous=None, keep=1,
                             keep_days=None, ages={}) == ["1.1", "1.2"]
    assert releases_to_prune(["1.0", "1.1", "1.2", "1.3"], current="1.3", previous="1.2",
                             keep=3, keep_days=None, ages={}) == ["1.0"]


def _record(frm: str | None, to: str | None, result: str, days_ago: float) -> dict[str, object]:
    return {"from": frm, "to": to, "result": result,
            "finished_at": (NOW - timedelta(days=days_ago)).isoformat()}


HISTORY = [
    _record(None, "1.0", "committed", 100),
    _record("1.0", "1.1", "committed", 60),
    _record("1.1", "1.1", "rolled-back", 50),       # 1.2 failed: current did not move
    _record("1.1", "1.1", "failed", 45),            # a failed download: nothing moved
    _record("1.1", "1.3", "committed", 40),
    _record("1.3", "1.0", "rolled-back", 20),       # the operator went back to 1.0
    _record("1.0", "1.3", "committed", 5),
    {"from": "1.3", "to": "1.4", "result": "committed", "finished_at": "garbage"},
]


def test_ages_count_from_when_a_release_last_stopped_being_current() -> None:
    ages = ages_from_history(HISTORY[:-1], NOW)
    assert ages == {"1.0": 5.0, "1.1": 40.0, "1.3": 20.0}


def test_an_unreadable_time_gives_no_age() -> None:
    assert "1.3" in ages_from_history(HISTORY[:-1], NOW)
    assert ages_from_history(HISTORY[-1:], NOW) == {}


def test_the_previous_release_is_what_was_current_before_the_current_one() -> None:
    assert previous_from_history(HISTORY[:-1], "1.3") == "1.0"
    assert previous_from_history(HISTORY[:3], "1.1") == "1.0"  # the failed 1.2 is no step
    assert previous_from_history(HISTORY, "9.9") is None
    assert previous_from_history(HISTORY, None) is None
