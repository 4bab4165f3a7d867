"""``fleetup keys``: rotate a role's signing key."""

from __future__ import annotations

from pathlib import Path

import click

from fleetup.cli._options import json_option, passphrase_option, repo_option
from fleetup.cli._output import emit_json, say


@click.group()
def keys() -> None:
    """Manage the repository's signing keys."""


@keys.command("rotate")
@repo_option
@click.argument("role", type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
@passphrase_option
@json_option
def rotate(repo_dir: Path, role: str, passphrase_env: str | None, as_json: bool) -> None:
    """Replace ROLE's key; the new root is signed by old and new keys, so devices that
    trust only the old root still update."""
    from fleetup.repository import passphrase_from_env, rotate_key

    keyid = rotate_key(repo_dir, role, passphrase=passphrase_from_env(passphrase_env))
    if as_json:
        emit_json({"role": role, "keyid": keyid})
    else:
        say(f"rotated the {role} key: new key id {keyid[:16]}…")
