"""The table itself: every row is named once, by a known attacker, with a refusal, and
the threat model quotes its count."""

from __future__ import annotations

import re
from pathlib import Path

from tests.security.__main__ import all_rows
from tests.security._table import ATTACKERS


def test_every_row_is_complete_and_unique() -> None:
    found = all_rows()
    names = [row.name for row in found]
    assert len(names) == len(set(names))
    for row in found:
        assert row.attacker in ATTACKERS
        assert row.refusal.strip()


def test_the_threat_model_states_the_suites_count() -> None:
    """docs/security.md quotes how many attacks the suite holds: keep it true."""
    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    stated = re.search(r"\*\*(\d+) attacks\*\*", text)
    assert stated is not None, "docs/security.md must say how many attacks the suite holds"
    assert int(stated.group(1)) == len(all_rows())
