"""``fleetup device``: the fleet server's devices, read and acted on one at a time."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from fleetup.cli._options import json_option
from fleetup.cli._output import emit_json, out, say, table

_server_option = click.option("--server", required=True, metavar="URL",
                              help="The fleet server's URL.")


@click.group()
def device() -> None:
    """Devices on a fleet server (token from FLEETUP_TOKEN; viewers read, admins act)."""


def _path(device_id: str, action: str = "") -> str:
    return f"/api/v1/devices/{quote(device_id, safe='')}" + (f"/{action}" if action else "")


def _call(server: str, method: str, path: str, **kwargs: Any) -> Any:
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        return request_json(client, method, path, **kwargs)


@device.command("list")
@_server_option
@click.option("--app", default=None, help="Only this app.")
@click.option("--channel", default=None, help="Only devices configured with this channel.")
@click.option("--version", "version", default=None, help="Only devices on this version.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_(server: str, app: str | None, channel: str | None, version: str | None,
          limit: int, as_json: bool) -> None:
    """The inventory: each device's version, channel, state and last check-in."""
    params = {k: v for k, v in (("app", app), ("channel", channel), ("version", version)) if v}
    result = _call(server, "GET", "/api/v1/devices", params={**params, "limit": limit})
    if as_json:
        emit_json(result["data"])
        return
    table(None, ["device", "app", "version", "platform", "channel", "state", "last seen"],
          [(d["id"], d["app"], d["version"], d["platform"], _channel(d),
            "removed" if d.get("removed_at") else d["state"], d["last_seen"])
           for d in result["data"]])
    if result["count"] > len(result["data"]):
        say(f"{len(result['data'])} of {result['count']} devices (use --limit)")


def _channel(d: dict[str, Any]) -> str:
    override = d.get("channel_override")
    return f"{override} (moved from {d['channel']})" if override else str(d["channel"])


@device.command("show")
@click.argument("device_id")
@_server_option
@click.option("--events", type=click.IntRange(0, 1000), default=20, show_default=True,
              help="How many of its latest events to list.")
@json_option
def show(device_id: str, server: str, events: int, as_json: bool) -> None:
    """One device: what it reported, and its latest events."""
    info = _call(server, "GET", _path(device_id))
    history: dict[str, Any] = {"data": [], "count": 0}
    if events:
        history = _call(server, "GET", _path(device_id, "history"), params={"limit": events})
    if as_json:
        emit_json({**info, "events": history["data"], "event_count": history["count"]})
        return
    for key in ("id", "app", "version", "previous_version", "platform", "state",
                "enrolled_at", "last_seen", "removed_at", "pinned_version", "rollback_to"):
        if info.get(key) is not None:
            out().print(f"{key.replace('_', ' ')}: {info[key]}", markup=False)
    out().print(f"channel: {_channel(info)}", markup=False)
    tags = ",".join(f"{k}={v}" for k, v in sorted(info["tags"].items())) or "-"
    out().print(f"tags: {tags}", markup=False)
    table(None, ["at", "type", "version", "from", "reason"],
          [(e["at"], e["type"], e["version"], e["from_version"], e["reason"])
           for e in history["data"]])


def _act(server: str, method: str, path: str, as_json: bool, done: str,
         **kwargs: Any) -> None:
    result = _call(server, method, path, **kwargs)
    if as_json:
        emit_json(result)
    else:
        say(done)


@device.command("check")
@click.argument("device_id")
@_server_option
@json_option
def check(device_id: str, server: str, as_json: bool) -> None:
    """Ask the device to check in now (over NATS where the server pushes; otherwise
    its next check-in answer says to check again soon)."""
    _act(server, "POST", _path(device_id, "check"), as_json,
         f"asked {device_id} to check in")


@device.command("move")
@click.argument("device_id")
@click.option("--channel", required=True,
              help="The channel the server decides by; the device's own channel undoes it.")
@_server_option
@json_option
def move(device_id: str, channel: str, server: str, as_json: bool) -> None:
    """Move the device to another channel, on the server (its configured channel is
    the default)."""
    _act(server, "POST", _path(device_id, "move"), as_json,
         f"{device_id} now gets the releases of {channel}", json={"channel": channel})


@device.command("remove")
@click.argument("device_id")
@_server_option
@json_option
def remove(device_id: str, server: str, as_json: bool) -> None:
    """Revoke the device's token; its record and history stay (enroll to come back)."""
    _act(server, "POST", _path(device_id, "remove"), as_json,
         f"removed {device_id}: its token no longer works, its history is kept")


@device.command("rollback")
@click.argument("device_id")
@click.option("--to", "to", default=None, metavar="VERSION",
              help="A version the device keeps (default: the one it ran before).")
@_server_option
@json_option
def rollback(device_id: str, to: str | None, server: str, as_json: bool) -> None:
    """Roll this device alone back to a version it keeps; its next check-in answer
    orders it, until it runs that version (refused if the device does not keep it)."""
    _act(server, "POST", _path(device_id, "rollback"), as_json,
         f"{device_id} is told to roll back to {to or 'its previous version'}",
         json={"to": to})


@device.command("pin")
@click.argument("device_id")
@click.option("--version", "version", required=True, help="A release the server has.")
@_server_option
@json_option
def pin(device_id: str, version: str, server: str, as_json: bool) -> None:
    """Leave the device out of rollouts and have it run VERSION until unpinned (the
    agent still installs only what the signed metadata allows)."""
    _act(server, "POST", _path(device_id, "pin"), as_json,
         f"{device_id} is pinned to {version}", json={"version": version})


@device.command("unpin")
@click.argument("device_id")
@_server_option
@json_option
def unpin(device_id: str, server: str, as_json: bool) -> None:
    """Let rollouts reach the device again."""
    _act(server, "POST", _path(device_id, "unpin"), as_json, f"{device_id} is unpinned")
