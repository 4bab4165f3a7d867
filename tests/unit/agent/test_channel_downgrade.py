"""``agent channel NAME --downgrade``: the operator's deliberate downgrade, still held to
the signed facts (channels, yanks, min_from), and never made by ``choose`` itself."""

from __future__ import annotations

import pytest

from fleetup.agent._choice import Install, choose, choose_channel_downgrade
from fleetup.errors import UsageError
from tests.unit.agent.test_choice import NOW, POLICY, device, pick, rel

RELEASES = [rel("1.0"), rel("1.1"), rel("1.2", yanked=True), rel("2.0", channels=["canary"]),
            rel("2.1", channels=["canary"]), rel("0.9", app="other"),
            rel("1.3", platform="other-platform")]


@pytest.mark.parametrize(("installed", "kept", "channel", "expected"), [
    ("2.1", (), "stable", ("install", "1.1")),          # newest stable, not the yanked 1.2
    ("2.1", ("1.1", "2.1"), "stable", ("rollback", "1.1")),  # kept: no download
    ("1.1", (), "stable", ("none", None)),              # already the newest of stable
    ("1.0", (), "stable", ("install", "1.1")),          # newer: an ordinary step forward
    ("1.0", (), "canary", ("install", "2.1")),
    (None, (), "stable", ("install", "1.1")),
])
def test_the_newest_unyanked_release_signed_for_the_channel(
        installed: str | None, kept: tuple[str, ...], channel: str,
        expected: tuple[str, str | None]) -> None:
    view = device(installed, kept=kept, channel=channel)
    decision = choose_channel_downgrade(RELEASES, view)
    assert pick(decision) == expected
    if isinstance(decision, Install):
        assert decision.on_purpose


def test_choose_never_downgrades_by_itself_after_a_channel_switch() -> None:
    assert pick(choose(RELEASES, device("2.1", channel="stable"), POLICY, NOW)) == ("none", None)


def test_min_from_and_yanks_are_respected() -> None:
    releases = [rel("1.0", yanked=True), rel("1.5", min_from="3.0"), rel("1.4")]
    assert pick(choose_channel_downgrade(releases, device("2.0"))) == ("install", "1.4")
    with pytest.raises(UsageError, match="signed for the channel beta"):
        choose_channel_downgrade(releases, device("2.0", channel="beta"))
    with pytest.raises(UsageError):
        choose_channel_downgrade([rel("1.0", yanked=True)], device("2.0"))
