"""The root ``fleetup`` group. Each command group lives in its own module and is imported
only when it runs, so ``fleetup agent ...`` on a device never loads the server's CLI."""

from __future__ import annotations

import importlib
from typing import Any

import click

from fleetup._version import __version__

# name -> (module, attribute, one-line help for the listing)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "repo": ("fleetup.cli._repo", "repo", "Create and maintain a signed release repository."),
    "release": ("fleetup.cli._release", "release", "Publish, list, yank and push releases."),
    "keys": ("fleetup.cli._keys", "keys", "Manage the repository's signing keys."),
    "agent": ("fleetup.cli._agent", "agent", "The update agent on a device."),
    "server": ("fleetup.cli._server", "server", "Run the fleet server."),
    "admin": ("fleetup.cli._admin", "admin", "Administer a fleet server from its machine."),
    "rollout": ("fleetup.cli._rollout", "rollout", "Staged rollouts on a fleet server."),
    "device": ("fleetup.cli._device", "device", "Devices on a fleet server, one at a time."),
    "alert": ("fleetup.cli._alert", "alert", "Alerts on a fleet server."),
    "flag": ("fleetup.cli._flag", "flag", "Feature flags of an app on a fleet server."),
    "demo": ("fleetup.cli._demo", "demo", "The whole story: a fleet updated, a bad release "
             "stopped."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (Click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, attribute, _ = _COMMANDS[cmd_name]
        command: object = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):  # pragma: no cover - a wiring bug
            raise TypeError(f"{module_name}.{attribute} is not a click command")
        if cmd_name == "release":
            from fleetup.cli._push import push

            assert isinstance(command, click.Group)
            command.add_command(push)
        if cmd_name in ("release", "agent"):
            from fleetup.cli import _self_update

            assert isinstance(command, click.Group)
            command.add_command(_self_update.add_agent if cmd_name == "release"
                                else _self_update.install_self)
        return command

    def format_commands(self, ctx: click.Context, formatter: Any) -> None:
        # The listing uses the short help above, so --help imports nothing more.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in _COMMANDS.items()])


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Print the full traceback when something fails.")
@click.version_option(__version__, prog_name="fleetup")
def cli(debug: bool) -> None:
    """fleetup keeps software up to date on machines nobody sits in front of.

    Publisher: repo, release, keys. Device: agent.
    Fleet: server, admin, rollout, device, alert, flag.
    """
