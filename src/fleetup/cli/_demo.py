"""``fleetup demo``: the main job, on embedded defaults (SQLite, local files)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--devices", default=20, show_default=True, type=click.IntRange(1, 200),
              help="How many devices (each a real `fleetup agent run` process).")
@click.option("--serve", is_flag=True,
              help="Keep the server, dashboard and agents running until Ctrl-C.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep everything in this directory. [default: a temporary one]")
@click.option("--keep", is_flag=True, help="Keep the temporary directory afterwards.")
@click.option("--port", default=0, type=click.IntRange(0, 65535),
              help="The server's port. [default: a free one]")
@click.pass_context
def demo(ctx: click.Context, devices: int, serve: bool, workdir: Path | None, keep: bool,
         port: int) -> None:
    """A publisher, a fleet server and N devices: a good release rolled out in stages,
    a broken one stopped and rolled back by health checks. Exit 0 only if it happened."""
    from fleetup.demo import DemoOptions, run_demo

    ctx.exit(run_demo(DemoOptions(devices=devices, serve=serve, workdir=workdir, keep=keep,
                                  port=port)))
