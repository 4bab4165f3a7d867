"""The pure update decision (``_choice``): tables of cases over signed facts, no IO."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from fleetup._facts import PhasedRollout, ReleaseFacts
from fleetup._versions import UpdateType
from fleetup.agent._choice import (
    Decision,
    Defer,
    DeviceView,
    Install,
    RollbackTo,
    UpToDate,
    Waiting,
    check_instruction,
    choose,
    waiting_of,
)
from fleetup.agent._config import MaintenanceWindow, PolicyConfig
from fleetup.errors import UsageError

APP, PLATFORM = "hello", "linux-x86_64"
NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
T = UpdateType


def rel(version: str, *, type: UpdateType = T.MINOR, channels: Sequence[str] = ("stable",),
        yanked: bool = False, min_from: str | None = None,
        rollout: PhasedRollout | None = None, app: str = APP,
        platform: str = PLATFORM) -> ReleaseFacts:
    facts = ReleaseFacts(app=app, version=version, platform=platform,
                         channels=tuple(channels), update_type=type,
                         tree_digest="sha256:" + "0" * 64, tree_size=10, tree_entries=1,
                         published=NOW.isoformat(), min_from=min_from, rollout=rollout)
    return facts.yank("broken build") if yanked else facts


def device(installed: str | None = "1.0", *, kept: Sequence[str] = (),
           failed: dict[str, str] | None = None, channel: str = "stable",
           device_id: str = "device-0001") -> DeviceView:
    kept = tuple(kept) or ((installed,) if installed else ())
    return DeviceView(device_id=device_id, app=APP, platform=PLATFORM, channel=channel,
                      installed=installed, kept=kept, failed=failed or {})


def pick(decision: Decision) -> tuple[str, str | None]:
    """(kind, version) of a decision, for compact tables."""
    if isinstance(decision, Install):
        assert decision.facts is not None
        return "install", decision.facts.version
    if isinstance(decision, Defer):
        assert decision.facts is not None
        return "defer", decision.facts.version
    if isinstance(decision, RollbackTo):
        return "rollback", decision.version
    assert isinstance(decision, UpToDate)
    return "none", None


POLICY = PolicyConfig()

CASES = [
    # (id, releases, device, expected)
    ("newest of several", [rel("1.0"), rel("1.1"), rel("1.2")], device("1.0"),
     ("install", "1.2")),
    ("PEP 440: 1.10 is newer than 1.9", [rel("1.9"), rel("1.10"), rel("1.2")], device("1.2"),
     ("install", "1.10")),
    ("PEP 440: a pre-release sorts before its final", [rel("1.1"), rel("1.1rc1")],
     device("1.0"), ("install", "1.1")),
    ("up to date", [rel("1.0"), rel("1.1")], device("1.1"), ("none", None)),
    ("older releases are never offered", [rel("0.9"), rel("1.0")], device("1.0"),
     ("none", None)),
    ("other channel ignored", [rel("1.1", channels=("beta",))], device("1.0"), ("none", None)),
    ("on the device's channel", [rel("1.1", channels=("beta",)), rel("1.2")],
     device("1.0", channel="beta"), ("install", "1.1")),
    ("in two channels", [rel("1.1", channels=("beta", "stable"))], device("1.0"),
     ("install", "1.1")),
    ("other platform ignored", [rel("1.1", platform="linux-aarch64")], device("1.0"),
     ("none", None)),
    ("other app ignored", [rel("9.0", app="other")], device("1.0"), ("none", None)),
    ("yanked never installed", [rel("1.1"), rel("1.2", yanked=True)], device("1.0"),
     ("install", "1.1")),
    ("only a yanked newer one", [rel("1.0"), rel("1.1", yanked=True)], device("1.0"),
     ("none", None)),
    ("failed here is skipped, an older newer one taken",
     [rel("1.1"), rel("1.2")], device("1.0", failed={"1.2": "health"}), ("install", "1.1")),
    ("failed here, nothing else", [rel("1.1")], device("1.0", failed={"1.1": "health"}),
     ("none", None)),
    ("a release newer than the failed one is tried", [rel("1.1"), rel("1.2")],
     device("1.0", failed={"1.1": "health"}), ("install", "1.2")),
    ("min_from not met: stop at the step first", [rel("1.5"), rel("1.9", min_from="1.5")],
     device("1.0"), ("install", "1.5")),
    ("min_from met", [rel("1.5"), rel("1.9", min_from="1.5")], device("1.5"),
     ("install", "1.9")),
    ("min_from compared by PEP 440", [rel("1.10", min_from="1.9")], device("1.10rc1"),
     ("install", "1.10")),
    ("min_from does not block a first install", [rel("2.0", min_from="1.5")], device(None),
     ("install", "2.0")),
    ("nothing installed, nothing published", [], device(None), ("none", None)),
    ("first install takes the newest", [rel("1.0"), rel("1.1")], device(None),
     ("install", "1.1")),
    ("first install ignores type policy", [rel("3.0", type=T.MAJOR)], device(None),
     ("install", "3.0")),
    ("major deferred by default", [rel("2.0", type=T.MAJOR)], device("1.0"),
     ("defer", "2.0")),
    ("patch installs", [rel("1.0.1", type=T.PATCH)], device("1.0"), ("install", "1.0.1")),
    ("security installs", [rel("1.0.1", type=T.SECURITY)], device("1.0"),
     ("install", "1.0.1")),
]


@pytest.mark.parametrize(("releases", "dev", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_choose(releases: list[ReleaseFacts], dev: DeviceView,
                expected: tuple[str, str | None]) -> None:
    assert pick(choose(releases, dev, POLICY, NOW)) == expected


def test_skipped_releases_say_why() -> None:
    decision = choose([rel("1.1"), rel("1.2")], device("1.0", failed={"1.2": "exit 3"}),
                      POLICY, NOW)
    assert pick(decision) == ("install", "1.1")
    assert decision.skipped == (("1.2", "failed its health check here: exit 3"),)


def test_up_to_date_still_names_the_failed_release() -> None:
    decision = choose([rel("1.1")], device("1.0", failed={"1.1": "exit 3"}), POLICY, NOW)
    assert isinstance(decision, UpToDate)
    assert [v for v, _ in decision.skipped] == ["1.1"]


# -- a yanked installed release ------------------------------------------------------------


YANK_CASES = [
    ("a newer release: move up", [rel("1.0"), rel("1.1", yanked=True), rel("1.2")],
     device("1.1", kept=("1.0", "1.1")), ("install", "1.2")),
    ("no newer: roll back to the kept older", [rel("1.0"), rel("1.1", yanked=True)],
     device("1.1", kept=("1.0", "1.1")), ("rollback", "1.0")),
    ("no newer, older not kept: signed downgrade", [rel("1.0"), rel("1.1", yanked=True)],
     device("1.1", kept=("1.1",)), ("install", "1.0")),
    ("the newest older one kept", [rel("0.9"), rel("1.0"), rel("1.1", yanked=True)],
     device("1.1", kept=("0.9", "1.0", "1.1")), ("rollback", "1.0")),
    ("an older yanked one is not a target", [rel("1.0", yanked=True),
                                             rel("1.1", yanked=True)],
     device("1.1", kept=("1.0", "1.1")), ("none", None)),
    ("a newer one that failed here is not a target",
     [rel("1.0"), rel("1.1", yanked=True), rel("1.2")],
     device("1.1", kept=("1.0", "1.1"), failed={"1.2": "x"}), ("rollback", "1.0")),
    # Issue 11 §2: the yank must not lift the policy that holds a major back.
    ("a held-back major is not a way out: back to the kept one",
     [rel("1.0"), rel("1.1", yanked=True), rel("2.0", type=T.MAJOR)],
     device("1.1", kept=("1.0", "1.1")), ("rollback", "1.0")),
    ("a held-back major is not a way out: signed downgrade",
     [rel("1.0"), rel("1.1", yanked=True), rel("2.0", type=T.MAJOR)],
     device("1.1", kept=("1.1",)), ("install", "1.0")),
    ("an allowed minor goes before a kept older one",
     [rel("1.0"), rel("1.1", yanked=True), rel("1.2"), rel("2.0", type=T.MAJOR)],
     device("1.1", kept=("1.0", "1.1")), ("install", "1.2")),
]


@pytest.mark.parametrize(("releases", "dev", "expected"), [c[1:] for c in YANK_CASES],
                         ids=[c[0] for c in YANK_CASES])
def test_leaving_a_yanked_release(releases: list[ReleaseFacts], dev: DeviceView,
                                  expected: tuple[str, str | None]) -> None:
    decision = choose(releases, dev, POLICY, NOW)
    assert pick(decision) == expected
    if expected[0] != "none":
        assert "1.1 was yanked: broken build" in decision.reason


def test_a_major_allowed_by_policy_is_a_way_out() -> None:
    policy = PolicyConfig(auto=frozenset(T))
    decision = choose([rel("1.0"), rel("1.1", yanked=True), rel("2.0", type=T.MAJOR)],
                      device("1.1", kept=("1.0", "1.1")), policy, NOW)
    assert pick(decision) == ("install", "2.0")


def test_outside_the_window_a_yank_goes_back_to_the_kept_tree() -> None:
    closed = PolicyConfig(window=MaintenanceWindow(time(2), time(3)))
    decision = choose([rel("1.0"), rel("1.1", yanked=True), rel("1.2")],
                      device("1.1", kept=("1.0", "1.1")), closed, NOW)
    assert pick(decision) == ("rollback", "1.0")


def test_nowhere_to_go_stays_and_says_it_runs_a_yanked_release() -> None:
    decision = choose([rel("1.1", yanked=True), rel("2.0", type=T.MAJOR)], device("1.1"),
                      POLICY, NOW)
    assert pick(decision) == ("none", None)
    assert decision.running_yanked == "1.1 was yanked: broken build"


def test_a_device_that_moves_off_a_yank_is_not_running_yanked() -> None:
    decision = choose([rel("1.0"), rel("1.1", yanked=True)], device("1.1", kept=("1.0", "1.1")),
                      POLICY, NOW)
    assert decision.running_yanked is None


def test_a_signed_downgrade_is_an_install_on_purpose() -> None:
    decision = choose([rel("1.0"), rel("1.1", yanked=True)], device("1.1", kept=("1.1",)),
                      POLICY, NOW)
    assert isinstance(decision, Install)
    assert decision.on_purpose


# -- explicit versions ---------------------------------------------------------------------


def test_wanted_installs_a_deferred_major_on_purpose() -> None:
    decision = choose([rel("2.0", type=T.MAJOR)], device("1.0"), POLICY, NOW, wanted="2.0")
    assert pick(decision) == ("install", "2.0")
    assert isinstance(decision, Install)
    assert decision.on_purpose


def test_wanted_installs_a_release_that_failed_here() -> None:
    decision = choose([rel("1.1"), rel("1.2")], device("1.0", failed={"1.1": "x"}), POLICY,
                      NOW, wanted="1.1")
    assert pick(decision) == ("install", "1.1")


def test_wanted_may_skip_ahead_or_pick_an_older_newer_one() -> None:
    releases = [rel("1.1"), rel("1.2"), rel("1.3")]
    assert pick(choose(releases, device("1.0"), POLICY, NOW, wanted="1.2")) == ("install", "1.2")


def test_wanted_is_compared_by_pep440() -> None:
    assert pick(choose([rel("1.1")], device("1.0"), POLICY, NOW, wanted="1.1.0")) == (
        "install", "1.1")


@pytest.mark.parametrize(("wanted", "message"), [
    ("9.9", "no signed release 9.9"),
    ("1.2", "1.2 is yanked: broken build"),
    ("1.0", "not newer than the installed 1.0"),
    ("0.9", "not newer than the installed 1.0"),
])
def test_wanted_refused(wanted: str, message: str) -> None:
    releases = [rel("0.9"), rel("1.0"), rel("1.2", yanked=True)]
    with pytest.raises(UsageError, match=message):
        choose(releases, device("1.0"), POLICY, NOW, wanted=wanted)


# -- policy and the maintenance window -----------------------------------------------------


def local(hour: int, minute: int = 0) -> datetime:
    """An aware moment at this wall-clock time in the machine's local zone."""
    return datetime(2024, 1, 15, hour, minute).astimezone()


NIGHT = PolicyConfig(window=MaintenanceWindow(time(22, 0), time(4, 0)))


@pytest.mark.parametrize(("hour", "minute", "inside"), [
    (21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True), (3, 59, True),
    (4, 0, False), (12, 0, False),
])
def test_a_window_wrapping_midnight(hour: int, minute: int, inside: bool) -> None:
    assert NIGHT.window is not None
    assert NIGHT.window.contains(time(hour, minute)) is inside
    decision = choose([rel("1.1")], device("1.0"), NIGHT, local(hour, minute))
    assert pick(decision) == (("install" if inside else "defer"), "1.1")
    if not inside:
        assert "maintenance window 22:00-04:00" in decision.reason


def test_a_window_within_one_day() -> None:
    window = MaintenanceWindow(time(2, 0), time(4, 0))
    assert [window.contains(time(h)) for h in (1, 2, 3, 4)] == [False, True, True, False]


@pytest.mark.parametrize("kind", [T.SECURITY, T.HOTFIX])
def test_security_and_hotfix_are_exempt_from_the_window(kind: UpdateType) -> None:
    decision = choose([rel("1.0.1", type=kind)], device("1.0"), NIGHT, local(12))
    assert pick(decision) == ("install", "1.0.1")


def test_a_patch_waits_for_the_window() -> None:
    assert pick(choose([rel("1.0.1", type=T.PATCH)], device("1.0"), NIGHT, local(12))) == (
        "defer", "1.0.1")


def test_policy_auto_decides_per_type() -> None:
    only_security = PolicyConfig(auto=frozenset({T.SECURITY}))
    assert pick(choose([rel("1.1", type=T.MINOR)], device("1.0"), only_security, NOW)) == (
        "defer", "1.1")
    assert pick(choose([rel("1.0.1", type=T.SECURITY)], device("1.0"), only_security,
                       NOW)) == ("install", "1.0.1")
    everything = PolicyConfig(auto=frozenset(T))
    assert pick(choose([rel("2.0", type=T.MAJOR)], device("1.0"), everything, NOW)) == (
        "install", "2.0")


def test_a_deferred_major_says_how_to_install_it() -> None:
    decision = choose([rel("2.0", type=T.MAJOR)], device("1.0"), POLICY, NOW)
    assert isinstance(decision, Defer)
    assert "update --version 2.0" in decision.reason


def test_what_waits_and_why() -> None:
    """Issue 11 §3: the release ``check`` reports but ``update`` holds back, and why."""
    major = choose([rel("2.0", type=T.MAJOR)], device("1.0"), POLICY, NOW)
    assert waiting_of(major) == Waiting(
        "2.0", "major updates install only on request (update --version 2.0)")
    window = choose([rel("1.0.1", type=T.PATCH)], device("1.0"), NIGHT, local(12))
    assert waiting_of(window) == Waiting("1.0.1", "waiting for the maintenance window "
                                                  "22:00-04:00")
    for decision in (choose([rel("1.1")], device("1.0"), POLICY, NOW),
                     choose([rel("1.0")], device("1.0"), POLICY, NOW)):
        assert waiting_of(decision) is None


def test_a_waiting_major_does_not_hold_back_a_minor_on_the_installed_line() -> None:
    decision = choose([rel("1.1"), rel("2.0", type=T.MAJOR)], device("1.0"), POLICY, NOW)
    assert pick(decision) == ("install", "1.1")


def test_a_security_fix_installs_while_a_major_waits_outside_the_window() -> None:
    releases = [rel("1.1"), rel("2.0", type=T.MAJOR), rel("1.1.1", type=T.SECURITY)]
    assert pick(choose(releases, device("1.1"), NIGHT, local(12))) == ("install", "1.1.1")


def test_a_patch_on_top_of_a_major_still_crosses_the_major() -> None:
    # 2.0.1 is signed as a patch of 2.0, but from 1.0 it is a major step.
    decision = choose([rel("2.0", type=T.MAJOR), rel("2.0.1", type=T.PATCH)], device("1.0"),
                      POLICY, NOW)
    assert pick(decision) == ("defer", "2.0.1")
    assert decision.reason.startswith("major updates install only on request")
    assert pick(choose([rel("2.0.1", type=T.SECURITY)], device("1.0"), POLICY, NOW)) == (
        "defer", "2.0.1")


def test_when_everything_waits_the_newest_is_pending() -> None:
    decision = choose([rel("1.1"), rel("1.2")], device("1.0"), NIGHT, local(12))
    assert pick(decision) == ("defer", "1.2")


# -- static phased rollouts ----------------------------------------------------------------

ROLLOUT = PhasedRollout(NOW, ((timedelta(0), 10.0), (timedelta(hours=1), 50.0),
                              (timedelta(hours=2), 100.0)))


def ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(n)]


def offered(device_id: str, at: datetime) -> bool:
    decision = choose([rel("1.1", rollout=ROLLOUT)], device("1.0", device_id=device_id),
                      POLICY, at)
    return isinstance(decision, Install)


def test_phased_rollout_reaches_about_the_right_share() -> None:
    # 10,000 ids at 10 %: the standard deviation is 0.3 %, so 8-12 % is over 6 sigma.
    share = sum(offered(d, NOW) for d in ids(10_000, seed=1)) / 10_000
    assert 0.08 <= share <= 0.12


def test_phased_rollout_keeps_devices_in_as_the_percent_grows() -> None:
    devices = ids(2_000, seed=2)
    stages = [NOW - timedelta(seconds=1), NOW, NOW + timedelta(hours=1),
              NOW + timedelta(hours=2)]
    reached = [{d for d in devices if offered(d, at)} for at in stages]
    assert reached[0] == set()
    assert reached[0] <= reached[1] <= reached[2] <= reached[3]
    assert reached[1] < reached[2] < reached[3] == set(devices)


def test_a_device_outside_the_rollout_is_told_why() -> None:
    outside = next(d for d in ids(100, seed=3) if not offered(d, NOW))
    decision = choose([rel("1.1", rollout=ROLLOUT)], device("1.0", device_id=outside),
                      POLICY, NOW)
    assert isinstance(decision, UpToDate)
    assert "phased rollout at 10% has not reached this device" in decision.skipped[0][1]


def test_first_install_respects_the_rollout_too() -> None:
    outside = next(d for d in ids(100, seed=4) if not offered(d, NOW))
    decision = choose([rel("1.0"), rel("1.1", rollout=ROLLOUT)],
                      device(None, device_id=outside), POLICY, NOW)
    assert pick(decision) == ("install", "1.0")


# -- fleet server instructions -------------------------------------------------------------


RELEASES = [rel("1.0"), rel("1.1"), rel("1.2", yanked=True), rel("2.0", type=T.MAJOR),
            rel("1.3", channels=("beta",)), rel("1.4", min_from="1.1")]
OVERRIDE = PolicyConfig(server_override=True)


def test_instruction_to_install_a_newer_signed_release_the_config_lets_through() -> None:
    decision = check_instruction(RELEASES, device("1.0"), "2.0", False, OVERRIDE, NOW)
    assert pick(decision) == ("install", "2.0")


def test_instruction_to_roll_back_to_a_kept_release() -> None:
    decision = check_instruction(RELEASES, device("1.1", kept=("1.0", "1.1")), "1.0",
                                 True, POLICY, NOW)
    assert pick(decision) == ("rollback", "1.0")


@pytest.mark.parametrize(("dev", "version", "rollback", "message"), [
    (device("1.0"), "3.0", False, "not a signed release"),
    (device("1.0"), "1.2", False, "yanked"),
    (device("1.1", kept=("1.0", "1.1")), "1.0", False, "refusing a downgrade"),
    (device("1.1"), "1.1", False, "refusing a downgrade"),
    (device("1.1", kept=("1.1",)), "1.0", True, "not kept here"),
    # Issue 12 §4: signed facts hold whatever the server says, override or not.
    (device("1.0"), "1.3", False, "signed for beta only, not for this device's channel"),
    (device("1.0"), "1.4", False, "needs 1.1 or later installed first"),
])
def test_instruction_refused(dev: DeviceView, version: str, rollback: bool,
                             message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_instruction(RELEASES, dev, version, rollback, OVERRIDE, NOW)


def test_instruction_for_a_release_that_failed_here_is_declined_quietly() -> None:
    decision = check_instruction(RELEASES, device("1.0", failed={"1.1": "exit 3"}), "1.1",
                                 False, POLICY, NOW)
    assert isinstance(decision, UpToDate)
    assert decision.skipped == (("1.1", "exit 3"),)


def test_instruction_ignores_other_apps_and_platforms() -> None:
    others = [replace(rel("5.0"), app="other"), rel("5.0", platform="linux-aarch64")]
    with pytest.raises(UsageError, match="not a signed release"):
        check_instruction(others, device("1.0"), "5.0", False, POLICY, NOW)


def test_local_policy_holds_back_what_the_server_chooses() -> None:
    decision = check_instruction(RELEASES, device("1.0"), "2.0", False, POLICY, NOW)
    assert pick(decision) == ("defer", "2.0")
    assert "major updates install only on request" in decision.reason


def test_the_window_holds_back_what_the_server_chooses() -> None:
    closed = PolicyConfig(window=MaintenanceWindow(time(2), time(3)))
    decision = check_instruction(RELEASES, device("1.0"), "1.1", False, closed, NOW)
    assert pick(decision) == ("defer", "1.1")


def test_a_release_the_policy_allows_installs_as_the_server_chose() -> None:
    decision = check_instruction(RELEASES, device("1.0"), "1.1", False, POLICY, NOW)
    assert pick(decision) == ("install", "1.1")
    assert decision.reason == "chosen by the fleet server"


def test_a_first_install_takes_what_the_server_chose() -> None:
    decision = check_instruction(RELEASES, device(None), "2.0", False, POLICY, NOW)
    assert pick(decision) == ("install", "2.0")
