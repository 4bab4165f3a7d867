"""fleetup updates itself: ``release add-agent`` (publisher) and ``agent install-self``
(device). Attached to the ``release`` and ``agent`` groups by the root group."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from fleetup.cli._options import json_option, passphrase_option, repo_option
from fleetup.cli._output import emit_json, result, say


@click.command("add-agent")
@repo_option
@click.option("--version", "version", required=True, help="fleetup's version, e.g. 0.2.0.")
@click.option("--wheel", "wheels", multiple=True, type=click.Path(path_type=Path),
              help="A wheel to install (fleetup's, or a dependency's); repeatable.")
@click.option("--no-index", is_flag=True,
              help="Dependencies only from --wheel files, never the package index.")
@click.option("--platform", default=None,
              help="Python ABI and OS, e.g. cp311-linux-x86_64. [default: this machine's]")
@click.option("--channel", "channels", multiple=True, help="Channel(s). [default: stable]")
@click.option("--notes", default="", help="Release notes.")
@click.option("--type", "update_type",
              type=click.Choice(["patch", "minor", "major", "security", "hotfix"]),
              default=None, help="Update type. [default: derived from the version change]")
@passphrase_option
@json_option
def add_agent(repo_dir: Path, version: str, wheels: tuple[Path, ...], no_index: bool,
              platform: str | None, channels: tuple[str, ...], notes: str,
              update_type: str | None, passphrase_env: str | None, as_json: bool) -> None:
    """Publish fleetup itself as the app fleetup-agent (bin/fleetup + lib/)."""
    from fleetup._agent_tree import agent_platform
    from fleetup._versions import UpdateType
    from fleetup.repository import passphrase_from_env
    from fleetup.repository._agent_release import AgentReleaseRequest, add_agent_release

    request = AgentReleaseRequest(version=version, platform=platform or agent_platform(),
                                  wheels=wheels, no_index=no_index,
                                  channels=channels or ("stable",), notes=notes,
                                  update_type=UpdateType(update_type) if update_type else None)
    added = add_agent_release(repo_dir, request, passphrase=passphrase_from_env(passphrase_env))
    facts = added.facts
    if as_json:
        emit_json({"app": facts.app, "version": facts.version, "platform": facts.platform,
                   "archive_size": added.archive_size, "tree_size": facts.tree_size,
                   "deltas": added.deltas})
        return
    say(f"published {facts.app} {facts.version} ({facts.platform}) on "
        f"{', '.join(facts.channels)}: {added.archive_size} bytes")
    for source, size in added.deltas.items():
        say(f"  delta from {source}: {size} bytes")


@click.command("install-self")
@click.pass_context
def install_self(ctx: click.Context) -> None:
    """Make this fleetup the first release under [self_update] root; prints the command
    a service manager runs."""
    from fleetup.agent._config import load_config
    from fleetup.agent._self_update import install_self as install

    argv = install(load_config(ctx.obj["config_path"]))
    result(shlex.join(argv))
