"""``fleetup repo``: create a release repository and keep its metadata fresh."""

from __future__ import annotations

from pathlib import Path

import click

from fleetup.cli._options import json_option, passphrase_option, repo_option
from fleetup.cli._output import emit_json, say
from fleetup.errors import UsageError


@click.group()
def repo() -> None:
    """Create and maintain a signed release repository (TUF)."""


@repo.command("init")
@click.argument("repo_dir", metavar="REPO", type=click.Path(file_okay=False, path_type=Path))
@click.option("--expires-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Days until targets (release) metadata expires. [default: 90]")
@click.option("--expires", "role_expiry", multiple=True, metavar="ROLE=DAYS",
              help="Expiry of any role, e.g. --expires timestamp=2 (root 365, targets 90, "
                   "snapshot 7, timestamp 1 by default).")
@click.option("--delta-methods", default=None, metavar="M,M,...",
              help="Patch methods deltas may use: lit, zdict, bsdiff, hdiff (HDiffPatch, "
                   "for binaries). [default: lit,zdict,bsdiff,hdiff]")
@passphrase_option
@json_option
def init(repo_dir: Path, expires_days: float | None, role_expiry: tuple[str, ...],
         delta_methods: str | None, passphrase_env: str | None, as_json: bool) -> None:
    """Create a repository: ed25519 keys for root, targets, snapshot and timestamp.

    Serving REPO/public (and nothing above it) with any static HTTP server is a
    complete static-mode update source; the keys stay in REPO/keys.
    """
    from fleetup.repository import init_repo, passphrase_from_env

    expiry = _parse_expiry(role_expiry)
    if expires_days is not None:
        expiry["targets"] = expires_days
    methods = None
    if delta_methods is not None:
        methods = tuple(m.strip() for m in delta_methods.split(",") if m.strip())
        unknown = sorted(set(methods) - {"lit", "zdict", "bsdiff", "hdiff"})
        if unknown:
            raise UsageError(f"--delta-methods: unknown method {unknown[0]!r}")
    layout = init_repo(repo_dir, expiry_days=expiry, delta_methods=methods,
                       passphrase=passphrase_from_env(passphrase_env))
    root_file = layout.metadata / "1.root.json"
    if as_json:
        emit_json({"repo": str(repo_dir), "trusted_root": str(root_file),
                   "public": str(layout.public), "keys": str(layout.keys)})
    else:
        say(f"created repository {repo_dir}")
        say(f"  ship {root_file} to devices as their trusted_root")
        say(f"  serve {layout.public} (only that folder) as their repo_url")
        say(f"  keep {layout.keys} secret (root and targets keys belong offline)")


def _parse_expiry(values: tuple[str, ...]) -> dict[str, float]:
    result: dict[str, float] = {}
    for value in values:
        role, _, days = value.partition("=")
        if role not in ("root", "targets", "snapshot", "timestamp"):
            raise UsageError(f"--expires {value}: unknown role {role!r}")
        try:
            result[role] = float(days)
        except ValueError:
            raise UsageError(f"--expires {value}: DAYS must be a number") from None
    return result


@repo.command("refresh")
@repo_option
@click.option("--role", "roles", multiple=True,
              type=click.Choice(["root", "targets", "snapshot", "timestamp"]),
              help="Roles to re-sign. [default: snapshot and timestamp]")
@passphrase_option
@json_option
def refresh(repo_dir: Path, roles: tuple[str, ...], passphrase_env: str | None,
            as_json: bool) -> None:
    """Re-sign snapshot and timestamp (or the given roles) before they expire."""
    from fleetup.repository import passphrase_from_env, refresh_repo

    chosen = roles or ("snapshot", "timestamp")
    if "snapshot" not in chosen and "targets" in chosen:
        chosen = (*chosen, "snapshot")
    if "timestamp" not in chosen:
        chosen = (*chosen, "timestamp")
    versions = refresh_repo(repo_dir, roles=chosen,
                            passphrase=passphrase_from_env(passphrase_env))
    if as_json:
        emit_json(versions)
    else:
        say("re-signed " + ", ".join(f"{r} (v{v})" for r, v in versions.items()))


@repo.command("migrate")
@click.argument("repo_dir", metavar="REPO", type=click.Path(file_okay=False, path_type=Path))
@json_option
def migrate(repo_dir: Path, as_json: bool) -> None:
    """Convert a repository of the old layout: move metadata/ and targets/ under public/.

    Safe to run again (after a crash, or on a converted repository).
    """
    from fleetup.repository import migrate_layout

    moved = migrate_layout(repo_dir)
    public = repo_dir / "public"
    if as_json:
        emit_json({"repo": str(repo_dir), "public": str(public), "moved": moved})
        return
    if not moved:
        say(f"{repo_dir} already has the current layout: serve {public}")
        return
    say(f"moved {', '.join(f'{m}/' for m in moved)} to {public}: serve {public} from now on")
    say(f"  if {repo_dir} itself was ever served, its private keys were readable: rotate "
        f"them (`fleetup keys rotate --repo {repo_dir} ROLE` for each role)")


@repo.command("serve")
@click.argument("repo_dir", metavar="REPO", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
def serve(repo_dir: Path, port: int) -> None:
    """Serve REPO/public (and nothing above it) on 127.0.0.1, for trying things out.

    Devices use http://127.0.0.1:PORT/ as their repo_url. Stop with Ctrl-C.
    """
    from fleetup.repository._serve import public_server

    server = public_server(repo_dir, port)
    host, bound = server.server_address[:2]
    say(f"serving {repo_dir / 'public'} at http://{host!s}:{bound}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("stopped")
    finally:
        server.server_close()
