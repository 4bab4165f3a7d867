"""One device rolled back, pinned and unpinned, and an app's feature flags (issue 16 §1,
§4): through the real CLI (``--json``) against a real server on loopback, with devices
speaking the fleet protocol."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.server.conftest import Fleet
from tests.integration.server.test_operator_cli import audited, run
from tests.support.fleet import cli, wait_for

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _shown(fleet: Fleet, device_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = run(fleet, "viewer", "device", "show", device_id, "--events", "0")
    return shown


def test_one_device_rolled_back_to_a_kept_version(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    d = fleet.device(version="1.1")
    d.kept = ["1.0", "1.1"]
    d.checkin()
    wait_for(lambda: _shown(fleet, d.device_id)["kept"] == ["1.0", "1.1"],
             what="the kept releases written")
    # Only a version the device reports keeping; only admins.
    refused = run(fleet, "admin", "device", "rollback", d.device_id, "--to", "0.9", code=1)
    assert refused["code"] == "version_not_kept"
    assert "409" in refused["error"]
    assert run(fleet, "viewer", "device", "rollback", d.device_id, "--to", "1.0",
               code=1)["code"] == "forbidden"
    shown = run(fleet, "admin", "device", "rollback", d.device_id, "--to", "1.0")
    assert shown["rollback_to"] == "1.0"
    answer = d.checkin()
    assert (answer["action"], answer["version"], answer["rollout_id"]) == (
        "rollback", "1.0", None)
    assert "1.0" in answer["target"]
    d.install(answer)
    # Running it ends the order, in the cache at once and in the database at the flush;
    # the rollback holds: a rollout of the version it left does not offer it again.
    assert d.checkin()["action"] == "none"
    other = fleet.device(version="1.0")
    cli("rollout", "start", "--server", fleet.server.url, "--app", "hello", "--version",
        "1.1", "--channel", "stable", "--stages", "100", token=fleet.tokens["publisher"])
    wait_for(lambda: other.checkin()["action"] == "install", what="the rollout offered")
    answer = d.checkin()
    assert answer["action"] == "none"
    assert "rolled this device back from 1.1" in answer["reason"]
    wait_for(lambda: _shown(fleet, d.device_id)["rollback_to"] is None,
             what="the rollback order cleared")
    assert "device.rollback" in audited(fleet)


def test_a_pinned_device_is_left_out_of_rollouts_until_unpinned(fleet: Fleet) -> None:
    assert fleet.push("1.1") == 0
    pinned, other = fleet.device(version="1.0"), fleet.device(version="1.0")
    for d in (pinned, other):
        d.checkin()
    assert run(fleet, "admin", "device", "pin", pinned.device_id, "--version", "1.2",
               code=1)["code"] == "unknown_release"  # not pushed: the server has no 1.2
    assert run(fleet, "admin", "device", "pin", pinned.device_id, "--version",
               "1.0")["pinned_version"] == "1.0"
    cli("rollout", "start", "--server", fleet.server.url, "--app", "hello", "--version",
        "1.1", "--channel", "stable", "--stages", "100", token=fleet.tokens["publisher"])
    wait_for(lambda: other.checkin()["action"] == "install", what="the rollout offered")
    answer = pinned.checkin()
    assert answer["action"] == "none"
    assert "pinned to 1.0" in answer["reason"]
    # Pinned to a version it does not run: told to install it, outside any rollout.
    run(fleet, "admin", "device", "pin", pinned.device_id, "--version", "1.1")
    pinned.version = "1.0"
    answer = pinned.checkin()
    assert (answer["action"], answer["version"], answer["rollout_id"]) == (
        "install", "1.1", None)
    run(fleet, "admin", "device", "pin", pinned.device_id, "--version", "1.0")
    run(fleet, "admin", "device", "unpin", pinned.device_id)
    answer = pinned.checkin()
    assert (answer["action"], answer["version"]) == ("install", "1.1")
    assert answer["rollout_id"] is not None
    assert {"device.pin", "device.unpin"} <= set(audited(fleet))


def _flags(device: Any, expected: dict[str, Any]) -> None:
    wait_for(lambda: device.checkin()["flags"] == expected,
             what=f"flags {expected} in the check-in answer")


def test_flags_by_device_group_channel_and_default(fleet: Fleet) -> None:
    plain = fleet.device(version="1.0")
    beta = fleet.device(version="1.0", channel="beta")
    site = fleet.device(version="1.0", channel="beta", tags={"site": "a"})
    alone = fleet.device(version="1.0", channel="beta", tags={"site": "a"})
    assert plain.checkin()["flags"] == {}
    for args in ((), ("--channel", "beta"), ("--group", "site=a"),
                 ("--device", alone.device_id)):
        value = {(): "blue", ("--channel", "beta"): "red", ("--group", "site=a"): "5",
                 }.get(args, "true")
        run(fleet, "admin", "flag", "set", "hello", "color", value, *args)
    _flags(alone, {"color": True})      # device > group
    _flags(site, {"color": 5})          # group > channel
    _flags(beta, {"color": "red"})      # channel > default
    _flags(plain, {"color": "blue"})
    listed = run(fleet, "viewer", "flag", "list", "hello")
    assert sorted((r["scope"], r["value"]["value"]) for r in listed) == sorted(
        [("default", "blue"), ("channel", "red"), ("group", 5), ("device", True)])
    run(fleet, "admin", "flag", "unset", "hello", "color", "--group", "site=a")
    _flags(site, {"color": "red"})
    # Scalars of bounded size only; viewers cannot change flags.
    assert run(fleet, "admin", "flag", "set", "hello", "x", '{"a": 1}', code=1)["error"]
    assert run(fleet, "admin", "flag", "set", "hello", "x", "y" * 1001,
               code=1)["code"] == "bad_flag"
    assert run(fleet, "viewer", "flag", "set", "hello", "x", "1",
               code=1)["code"] == "forbidden"
    assert {"flag.set", "flag.unset"} <= set(audited(fleet))


def test_a_flag_never_chooses_what_is_installed(fleet: Fleet) -> None:
    """Flags named like the answer's install fields stay under ``flags``: the decision
    and every other field of the answer are the same as without them."""
    assert fleet.push("1.1") == 0
    d = fleet.device(version="1.0")
    before = d.checkin()
    for name, value in (("version", '"1.1"'), ("action", "install"), ("target", "x"),
                        ("rollout_id", "1"), ("pinned_version", '"1.1"')):
        run(fleet, "admin", "flag", "set", "hello", name, value)
    expected = {"version": "1.1", "action": "install", "target": "x", "rollout_id": 1,
                "pinned_version": "1.1"}
    _flags(d, expected)
    after = d.checkin()
    assert {k: v for k, v in after.items() if k not in ("flags", "next_check_seconds")} == {
        k: v for k, v in before.items() if k not in ("flags", "next_check_seconds")}
    assert after["action"] == "none"
