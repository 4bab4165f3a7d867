"""The root ``fleetup`` group; each command group lives in its own module."""

from __future__ import annotations

import click

from fleetup._version import __version__
from fleetup.cli._agent import agent
from fleetup.cli._keys import keys
from fleetup.cli._release import release
from fleetup.cli._repo import repo


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Print the full traceback when something fails.")
@click.version_option(__version__, prog_name="fleetup")
def cli(debug: bool) -> None:
    """fleetup keeps software up to date on machines nobody sits in front of.

    Publisher: repo, release, keys. Device: agent. Fleet: server, admin, rollout.
    """


cli.add_command(repo)
cli.add_command(release)
cli.add_command(keys)
cli.add_command(agent)
