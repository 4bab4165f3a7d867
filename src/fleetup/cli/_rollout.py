"""``fleetup rollout``: start, watch and steer staged rollouts on a fleet server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fleetup._groups import parse_group
from fleetup.cli._options import json_option
from fleetup.cli._output import emit_json, out, say, table
from fleetup.errors import UsageError

_server_option = click.option("--server", required=True, metavar="URL",
                              help="The fleet server's URL.")


@click.group()
def rollout() -> None:
    """Staged rollouts on a fleet server (token from FLEETUP_TOKEN)."""


_SPEC_OPTIONS = (
    _server_option,
    click.option("--app", required=True),
    click.option("--version", "version", required=True),
    click.option("--channel", required=True),
    click.option("--stages", default="1,10,50,100", show_default=True,
                 help="Percent of devices at each stage; the last one is 100."),
    click.option("--soak", "soak", type=click.IntRange(min=0), default=3600,
                 show_default=True, help="Seconds each stage must run healthy before the "
                                         "next one."),
    click.option("--min-reports", type=click.IntRange(min=0), default=5, show_default=True,
                 help="Reports a stage needs (at most the devices it targets) to advance."),
    click.option("--max-failure-rate", type=click.FloatRange(0, 1), default=0.05,
                 show_default=True, help="Pause the rollout above this share of failures."),
    click.option("--group", "groups", multiple=True, metavar="TAG=VALUE",
                 help="Only devices with this tag (repeat: all must match)."),
    click.option("--max-failure-increase", type=click.FloatRange(0, 1), default=None,
                 help="Control-group gate: halt when the health-report failure rate of "
                      "devices on the release exceeds that of devices still on another "
                      "version by more than this (e.g. 0.02). [default: no gate]"),
    click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True),
                 default=0.95, show_default=True,
                 help="Confidence the gate's one-sided test needs to halt."),
    click.option("--on-halt", type=click.Choice(["pause", "rollback"]), default="pause",
                 show_default=True,
                 help="What a halt does: pause, or send the devices that took the "
                      "release back (an abort with rollback, with no operator)."),
    json_option,
)


def _spec_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that describe a rollout (``start`` and ``dry-run`` share them)."""
    for option in reversed(_SPEC_OPTIONS):
        command = option(command)
    return command


def _spec(app: str, version: str, channel: str, stages: str, soak: int, min_reports: int,
          max_failure_rate: float, groups: tuple[str, ...], **gate: Any) -> dict[str, Any]:
    """The request body; ``gate``: ``max_failure_increase``, ``confidence``, ``on_halt``."""
    return {"app": app, "version": version, "channel": channel,
            "stages": _parse_stages(stages), "soak_seconds": soak,
            "min_reports": min_reports, "max_failure_rate": max_failure_rate,
            "group": parse_group(groups, label="--group"), **gate}


@rollout.command("start")
@_spec_options
def start(server: str, app: str, version: str, channel: str, stages: str, soak: int,
          min_reports: int, max_failure_rate: float, groups: tuple[str, ...],
          max_failure_increase: float | None, confidence: float, on_halt: str,
          as_json: bool) -> None:
    """Start a staged rollout of APP VERSION on CHANNEL."""
    from fleetup.cli._api import operator_client, request_json

    body = _spec(app, version, channel, stages, soak, min_reports, max_failure_rate, groups,
                 max_failure_increase=max_failure_increase, confidence=confidence,
                 on_halt=on_halt)
    with operator_client(server) as client:
        result = request_json(client, "POST", "/api/v1/rollouts", json=body)
    if as_json:
        emit_json(result)
    else:
        say(f"rollout {result['id']} started: {app} {version} on {channel}, "
            f"stage {result['stage_percent']:g}%")
        click.echo(result["id"])


@rollout.command("dry-run")
@_spec_options
def dry_run(server: str, app: str, version: str, channel: str, stages: str, soak: int,
            min_reports: int, max_failure_rate: float, groups: tuple[str, ...],
            max_failure_increase: float | None, confidence: float, on_halt: str,
            as_json: bool) -> None:
    """How many devices each stage would reach if this rollout started now (changes
    nothing; cohorts are drawn for the id the rollout would get)."""
    from fleetup.cli._api import operator_client, request_json

    body = _spec(app, version, channel, stages, soak, min_reports, max_failure_rate, groups,
                 max_failure_increase=max_failure_increase, confidence=confidence,
                 on_halt=on_halt)
    with operator_client(server) as client:
        result = request_json(client, "POST", "/api/v1/rollouts/dry-run", json=body)
    if as_json:
        emit_json(result)
        return
    say(f"{result['matching']} devices match {app} on {channel}; {result['in_scope']} run a "
        f"platform {version} exists for (cohorts of rollout {result['rollout_id']})")
    table(None, ["stage", "up to", "devices reached", "added", "offered the release"],
          [(s["index"] + 1, f"{s['percent']:g}%", s["reached"], s["new"], s["will_install"])
           for s in result["stages"]])


def _parse_stages(text: str) -> list[float]:
    # Only the syntax is checked here; the server checks the values (and says why).
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--stages {text!r}: use percents, e.g. 1,10,50,100") from None


@rollout.command("status")
@click.argument("rollout_id", type=int)
@_server_option
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True,
              help="At most this many devices in the per-device table.")
@json_option
def status(rollout_id: int, server: str, limit: int, as_json: bool) -> None:
    """The rollout's stage and health, and per device why it is (not) getting it."""
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        info = request_json(client, "GET", f"/api/v1/rollouts/{rollout_id}")
        devices = request_json(client, "GET", f"/api/v1/rollouts/{rollout_id}/devices",
                               params={"limit": limit})
    if as_json:
        emit_json({**info, "devices": devices["data"], "device_count": devices["count"]})
        return
    _print_status(info)
    table(None, ["device", "version", "platform", "channel", "cohort", "targeted", "why"],
          [(d["device_id"], d["version"], d["platform"], d["channel"], f"{d['cohort']:.2f}",
            "yes" if d["targeted"] else "no", d["reason"]) for d in devices["data"]])


def _print_status(info: dict[str, Any]) -> None:
    stats = info.get("stats") or {}
    group = ",".join(f"{k}={v}" for k, v in sorted(info["group"].items())) or "all devices"
    out().print(f"rollout {info['id']}: {info['app']} {info['version']} on {info['channel']} "
              f"({group})", markup=False)
    out().print(f"  state {info['state']}: {info['state_reason']}", markup=False)
    out().print(f"  stage {info['stage_index'] + 1}/{len(info['stages'])} at "
              f"{info['stage_percent']:g}% since {info['stage_started_at']}", markup=False)
    if stats:
        out().print(f"  this stage: {stats['stage_targeted']} devices, {stats['stage_reports']} "
                  f"reports, {stats['stage_failures']} failures; whole rollout: "
                  f"{stats['total_reports']} reports, {stats['total_failures']} failures",
                  markup=False)
        out().print(f"  next: {stats['next']}", markup=False)
    if gate := stats.get("gate"):
        out().print(f"  control gate ({gate['verdict']}): {gate['reason']}", markup=False)


def _control(rollout_id: int, server: str, action: str, as_json: bool,
             body: dict[str, Any] | None = None) -> None:
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        result = request_json(client, "POST", f"/api/v1/rollouts/{rollout_id}/{action}",
                              json=body)
    if as_json:
        emit_json(result)
    else:
        say(f"rollout {rollout_id} is {result['state']}: {result['state_reason']}")


@rollout.command("pause")
@click.argument("rollout_id", type=int)
@_server_option
@json_option
def pause(rollout_id: int, server: str, as_json: bool) -> None:
    """Stop offering the release to more devices (installed devices keep it)."""
    _control(rollout_id, server, "pause", as_json)


@rollout.command("resume")
@click.argument("rollout_id", type=int)
@_server_option
@json_option
def resume(rollout_id: int, server: str, as_json: bool) -> None:
    """Resume a paused rollout; its stage soaks again and old failures stop counting."""
    _control(rollout_id, server, "resume", as_json)


@rollout.command("advance")
@click.argument("rollout_id", type=int)
@_server_option
@json_option
def advance(rollout_id: int, server: str, as_json: bool) -> None:
    """Move an active rollout to its next stage now, without waiting for its soak and
    reports (on its last stage: complete it)."""
    _control(rollout_id, server, "advance", as_json)


@rollout.command("abort")
@click.argument("rollout_id", type=int)
@_server_option
@click.option("--rollback", is_flag=True,
              help="Send the devices that took the release back to the version they had.")
@click.option("--reason", default="", help="Why, for the audit log and the devices.")
@json_option
def abort(rollout_id: int, server: str, rollback: bool, reason: str, as_json: bool) -> None:
    """End the rollout for good (optionally rolling its devices back); a completed
    rollout can only be ended with --rollback (see ``revert``)."""
    _control(rollout_id, server, "abort", as_json, {"rollback": rollback, "reason": reason})


@rollout.command("revert")
@click.argument("rollout_id", type=int)
@_server_option
@click.option("--reason", default="", help="Why, for the audit log and the devices.")
@json_option
def revert(rollout_id: int, server: str, reason: str, as_json: bool) -> None:
    """Send the devices that took the release back, even after the rollout completed
    (an abort with rollback)."""
    _control(rollout_id, server, "abort", as_json, {"rollback": True, "reason": reason})


@rollout.command("list")
@_server_option
@click.option("--app", default=None, help="Only this app.")
@click.option("--state", type=click.Choice(["active", "paused", "completed", "aborted"]),
              default=None, help="Only rollouts in this state.")
@json_option
def list_(server: str, app: str | None, state: str | None, as_json: bool) -> None:
    """The rollouts on the server, newest first, as the dashboard lists them."""
    from fleetup.cli._api import operator_client, request_json

    params = {k: v for k, v in (("app", app), ("state", state)) if v}
    with operator_client(server) as client:
        result = request_json(client, "GET", "/api/v1/rollouts", params=params)
    if as_json:
        emit_json(result["data"])
        return
    table(None, ["id", "app", "version", "channel", "state", "stage", "since", "why"],
          [(r["id"], r["app"], r["version"], r["channel"], r["state"],
            f"{r['stage_index'] + 1}/{len(r['stages'])} at {r['stage_percent']:g}%",
            r["stage_started_at"], r["state_reason"]) for r in result["data"]])
