"""``fleetup release``: publish, list and yank releases."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from fleetup.cli._options import json_option, passphrase_option, repo_option
from fleetup.cli._output import emit_json, say, table
from fleetup.errors import UsageError


@click.group()
def release() -> None:
    """Publish, list and yank releases."""


@release.command("add")
@click.argument("src_dir", type=click.Path(path_type=Path))
@repo_option
@click.option("--app", required=True, help="The application's name.")
@click.option("--version", "version", required=True, help="PEP 440 version, e.g. 1.2.0.")
@click.option("--platform", default=None, help="Target platform. [default: this machine's]")
@click.option("--channel", "channels", multiple=True, help="Channel(s). [default: stable]")
@click.option("--type", "update_type",
              type=click.Choice(["patch", "minor", "major", "security", "hotfix"]),
              default=None, help="Update type. [default: derived from the version change]")
@click.option("--notes", default="", help="Release notes.")
@click.option("--health-cmd", default=None,
              help="Health check command, split like a shell line, run in the install.")
@click.option("--health-url", default=None, help="Health check URL that must answer 2xx.")
@click.option("--health-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds the health check may take.")
@click.option("--min-from", default=None,
              help="Oldest installed version that may update straight to this one.")
@click.option("--rollout", default=None, metavar="SCHEDULE",
              help="Static-mode phased rollout, e.g. '10,50@1d,100@3d' (percent@delay).")
@passphrase_option
@json_option
def add(src_dir: Path, repo_dir: Path, app: str, version: str, platform: str | None,
        channels: tuple[str, ...], update_type: str | None, notes: str,
        health_cmd: str | None, health_url: str | None, health_timeout: float,
        min_from: str | None, rollout: str | None, passphrase_env: str | None,
        as_json: bool) -> None:
    """Publish the tree SRC_DIR as a release, with deltas from recent releases."""
    from fleetup._facts import HealthSpec, default_platform
    from fleetup._versions import UpdateType
    from fleetup.repository import ReleaseRequest, add_release, passphrase_from_env

    health = None
    if health_cmd or health_url:
        try:
            command = tuple(shlex.split(health_cmd)) if health_cmd else ()
        except ValueError as e:
            raise UsageError(f"--health-cmd: {e}") from None
        health = HealthSpec(command, health_url, health_timeout)
    request = ReleaseRequest(
        src=src_dir, app=app, version=version, platform=platform or default_platform(),
        channels=channels or ("stable",),
        update_type=UpdateType(update_type) if update_type else None,
        notes=notes, health=health, min_from=min_from, rollout=rollout)
    added = add_release(repo_dir, request, passphrase=passphrase_from_env(passphrase_env),
                        progress=None if as_json else say)
    facts = added.facts
    if as_json:
        emit_json({"app": facts.app, "version": facts.version, "platform": facts.platform,
                   "type": facts.update_type.value, "channels": list(facts.channels),
                   "target": facts.target_path, "archive_size": added.archive_size,
                   "tree_size": facts.tree_size, "tree_digest": facts.tree_digest,
                   "deltas": added.deltas, "skipped_deltas": added.skipped_deltas})
        return
    say(f"published {facts.app} {facts.version} ({facts.platform}, {facts.update_type}) "
        f"on {', '.join(facts.channels)}: {added.archive_size} bytes")
    for source, size in added.deltas.items():
        say(f"  delta from {source}: {size} bytes")


@release.command("list")
@click.option("--repo", "repo_dir", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="The release repository directory.")
@click.option("--server", default=None, metavar="URL",
              help="List what a fleet server offers instead (token from FLEETUP_TOKEN).")
@click.option("--app", default=None, help="Only this app.")
@json_option
def list_(repo_dir: Path | None, server: str | None, app: str | None, as_json: bool) -> None:
    """List published releases (of REPO, or pushed to a fleet server)."""
    if (repo_dir is None) == (server is None):
        raise UsageError("give --repo REPO or --server URL (one of them)")
    if repo_dir is None:
        assert server is not None
        _list_server(server, app, as_json)
        return
    from fleetup.repository import list_releases

    rows = [r for r in list_releases(repo_dir) if app is None or r[0].app == app]
    if as_json:
        emit_json([{"app": f.app, "version": f.version, "platform": f.platform,
                    "channels": list(f.channels), "type": f.update_type.value,
                    "notes": f.notes, "published": f.published, "yanked": f.yanked,
                    "yank_reason": f.yank_reason or None, "archive_size": size,
                    "tree_size": f.tree_size, "deltas_from": deltas,
                    "target": f.target_path} for f, size, deltas in rows])
        return
    table(None, ["app", "version", "platform", "type", "channels", "size", "deltas from",
                 "status"],
          [(f.app, f.version, f.platform, f.update_type.value, ",".join(f.channels), size,
            ",".join(deltas) or "-", "yanked" if f.yanked else "") for f, size, deltas in rows])


def _list_server(server: str, app: str | None, as_json: bool) -> None:
    """The releases a fleet server holds every file of (those it can offer)."""
    from fleetup.cli._api import operator_client, request_json

    with operator_client(server) as client:
        result = request_json(client, "GET", "/api/v1/releases",
                              params={"app": app} if app else None)
    if as_json:
        emit_json(result["data"])
        return
    table(None, ["app", "version", "platform", "type", "channels", "size", "pushed",
                 "status"],
          [(r["app"], r["version"], r["platform"], r["update_type"], ",".join(r["channels"]),
            r["length"], r["pushed_at"], "yanked" if r["yanked"] else "")
           for r in result["data"]])


@release.command("yank")
@repo_option
@click.option("--app", required=True)
@click.option("--version", "version", required=True)
@click.option("--platform", default=None, help="Only this platform. [default: all]")
@click.option("--reason", default="", help="Why; devices report it when they roll back.")
@passphrase_option
@json_option
def yank(repo_dir: Path, app: str, version: str, platform: str | None, reason: str,
         passphrase_env: str | None, as_json: bool) -> None:
    """Yank a release: signed, never installed again, and devices running it roll back."""
    from fleetup.repository import passphrase_from_env, yank_release

    yanked = yank_release(repo_dir, app=app, version=version, platform=platform,
                          reason=reason, passphrase=passphrase_from_env(passphrase_env))
    if as_json:
        emit_json([{"app": f.app, "version": f.version, "platform": f.platform}
                   for f in yanked])
    else:
        for f in yanked:
            say(f"yanked {f.app} {f.version} ({f.platform})")
