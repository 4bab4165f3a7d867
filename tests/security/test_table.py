"""The table itself: every row is named once, by a known attacker, with a refusal."""

from __future__ import annotations

from tests.security.__main__ import all_rows
from tests.security._table import ATTACKERS


def test_every_row_is_complete_and_unique() -> None:
    found = all_rows()
    names = [row.name for row in found]
    assert len(names) == len(set(names))
    for row in found:
        assert row.attacker in ATTACKERS
        assert row.refusal.strip()
