"""``fleetup flag``: an app's feature flags on a fleet server (configuration the app
reads, delivered with check-ins; never a say in what is installed)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from fleetup.cli._options import json_option
from fleetup.cli._output import emit_json, say, table
from fleetup.errors import UsageError

_server_option = click.option("--server", required=True, metavar="URL",
                              help="The fleet server's URL.")


def _scope_options(function: Any) -> Any:
    for option in (
            click.option("--device", "device", default=None, metavar="ID",
                         help="For this device alone (wins over all else)."),
            click.option("--group", "group", default=None, metavar="TAG=VALUE",
                         help="For devices with this tag (wins over a channel's value)."),
            click.option("--channel", "channel", default=None,
                         help="For devices on this channel (wins over the default).")):
        function = option(function)
    return function


@click.group()
def flag() -> None:
    """Feature flags of an app (token from FLEETUP_TOKEN; viewers read, admins change)."""


def _call(server: str, method: str, path: str, **kwargs: Any) -> Any:
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        return request_json(client, method, path, **kwargs)


def _path(app: str, name: str = "") -> str:
    return f"/api/v1/flags/{quote(app, safe='')}" + (f"/{quote(name, safe='')}" if name
                                                     else "")


def parse_value(text: str) -> str | int | float | bool:
    """A JSON scalar (``true``, ``3``, ``0.5``, ``"on"``), else the text itself.

    Raises:
        UsageError: a JSON object, list or null (flags are scalars).
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, str | int | float | bool):
        return value
    raise UsageError(f"a flag's value is a string, number or boolean, not {text!r}")


def _scoped(channel: str | None, group: str | None, device: str | None) -> dict[str, str]:
    return {k: v for k, v in (("channel", channel), ("group", group), ("device", device))
            if v is not None}


def _where(row: dict[str, Any]) -> str:
    return row["scope"] if row["scope"] == "default" else f"{row['scope']} {row['scope_key']}"


@flag.command("set")
@click.argument("app")
@click.argument("name")
@click.argument("value")
@_scope_options
@_server_option
@json_option
def set_(app: str, name: str, value: str, channel: str | None, group: str | None,
         device: str | None, server: str, as_json: bool) -> None:
    """Set flag NAME of APP to VALUE (JSON scalar or text) for the default, or for one
    channel, group or device (device > group > channel > default)."""
    row = _call(server, "PUT", _path(app, name),
                json={"value": parse_value(value), **_scoped(channel, group, device)})
    if as_json:
        emit_json(row)
    else:
        say(f"{app} {name} = {json.dumps(row['value']['value'])} ({_where(row)})")


@flag.command("unset")
@click.argument("app")
@click.argument("name")
@_scope_options
@_server_option
@json_option
def unset(app: str, name: str, channel: str | None, group: str | None, device: str | None,
          server: str, as_json: bool) -> None:
    """Remove the value of flag NAME for the default, or one channel, group or device."""
    result = _call(server, "DELETE", _path(app, name),
                   params=_scoped(channel, group, device))
    if as_json:
        emit_json(result)
    else:
        say(f"{app} {name}: removed the value for {_where(result)}")


@flag.command("list")
@click.argument("app")
@_server_option
@json_option
def list_(app: str, server: str, as_json: bool) -> None:
    """Every value of APP's flags, by name and scope."""
    rows = _call(server, "GET", _path(app))
    if as_json:
        emit_json(rows)
        return
    table(None, ["flag", "scope", "value", "set by", "at"],
          [(r["name"], _where(r), json.dumps(r["value"]["value"]), r["updated_by"],
            r["updated_at"]) for r in rows])
