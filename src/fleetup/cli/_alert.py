"""``fleetup alert``: the fleet server's alerts, listed and acknowledged from a shell."""

from __future__ import annotations

import click

from fleetup.cli._options import json_option
from fleetup.cli._output import emit_json, say, table

_server_option = click.option("--server", required=True, metavar="URL",
                              help="The fleet server's URL.")


@click.group()
def alert() -> None:
    """Alerts on a fleet server (token from FLEETUP_TOKEN)."""


@alert.command("list")
@_server_option
@click.option("--state", type=click.Choice(["open", "acknowledged", "all"]), default="all",
              show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def list_(server: str, state: str, limit: int, as_json: bool) -> None:
    """Alerts, newest first (viewer)."""
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        result = request_json(client, "GET", "/api/v1/alerts",
                              params={"state": state, "limit": limit})
    if as_json:
        emit_json(result["data"])
        return
    table(None, ["id", "severity", "app", "title", "opened", "acknowledged"],
          [(a["id"], a["severity"], a["app"], a["title"], a["created_at"],
            a["acknowledged_by"] or "") for a in result["data"]])


@alert.command("ack")
@click.argument("alert_id", type=click.IntRange(min=1))
@_server_option
@json_option
def ack(alert_id: int, server: str, as_json: bool) -> None:
    """Acknowledge an alert (publisher): it stays listed, no longer open."""
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        result = request_json(client, "POST", f"/api/v1/alerts/{alert_id}/ack")
    if as_json:
        emit_json(result)
    else:
        say(f"alert {alert_id} acknowledged by {result['acknowledged_by']}: {result['title']}")
