"""``fleetup keys``: rotate a role's signing key."""

from __future__ import annotations

from pathlib import Path

import click

from fleetup.cli._options import json_option, passphrase_option, repo_option
from fleetup.cli._output import emit_json, say
from fleetup.errors import UsageError


@click.group()
def keys() -> None:
    """Manage the repository's signing keys."""


@keys.command("rotate")
@repo_option
@click.argument("role", required=False,
                type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
@click.option("--online", is_flag=True,
              help="Rotate both online keys (snapshot and timestamp) in one new root: the "
                   "recovery from a fast-forward attack or a stolen fleet server.")
@passphrase_option
@json_option
def rotate(repo_dir: Path, role: str | None, online: bool, passphrase_env: str | None,
           as_json: bool) -> None:
    """Replace ROLE's key (or, with --online, the snapshot and timestamp keys); the new
    root is signed by old and new keys, so devices that trust only the old root still
    update."""
    from fleetup.repository import ONLINE_ROLES, passphrase_from_env, rotate_keys

    if (role is None) == (not online):
        raise UsageError("name one ROLE, or pass --online (snapshot and timestamp)")
    roles = ONLINE_ROLES if online else (str(role),)
    keyids = rotate_keys(repo_dir, roles, passphrase=passphrase_from_env(passphrase_env))
    if as_json:
        emit_json({"role": role, "keyid": keyids[role]} if role else {"keyids": keyids})
        return
    for name, keyid in keyids.items():
        say(f"rotated the {name} key: new key id {keyid[:16]}…")
