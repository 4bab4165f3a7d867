"""``fleetup admin``: act on the fleet server's database and data directly.

These run on the server's machine (no HTTP, no token needed): the first admin token
and enrollment tokens, and seeding the release store from a publisher's repository.
"""

from __future__ import annotations

import getpass
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleetup.cli._options import json_option, passphrase_option
from fleetup.cli._output import emit_json, say
from fleetup.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_data_option = click.option(
    "--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
    default=Path("fleetup-data"), show_default=True, help="The server's data directory.")
_db_option = click.option("--db", "db_url", default=None, metavar="URL",
                          help="The server's database URL. [default: DATA/fleetup.db]")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@click.group()
def admin() -> None:
    """Administer a fleet server from its own machine."""


@admin.command("init")
@_data_option
@_db_option
@click.option("--from", "source", default=None,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Also seed the release store from this publisher repository "
                   "(as `admin repo init --from`).")
@passphrase_option
@json_option
def init(data_dir: Path, db_url: str | None, source: Path | None,
         passphrase_env: str | None, as_json: bool) -> None:
    """Create the server's data once: the database, the release store (with --from) and
    the first admin token, printed on stdout; then the next three commands."""
    from fleetup.server import _crud
    from fleetup.server._auth import Role

    with _session(data_dir, db_url) as session:
        if _crud.list_operator_tokens(session):
            raise UsageError(f"{data_dir} already holds a fleet server's data: make more "
                             "tokens with `fleetup admin token create`")
        if source is not None:
            _seed_store(source, data_dir, passphrase_env)
        row, secret = _crud.create_operator_token(session, role=Role.ADMIN, name="first admin",
                                                  created_by=_actor())
        _crud.add_audit(session, actor=_actor(), action="server.init",
                        target=f"token:{row.id}", details={"store": source is not None})
        session.commit()
    steps = _next_steps(data_dir, source is not None)
    if as_json:
        emit_json({"data": str(data_dir), "token": secret, "next": steps})
        return
    click.echo(secret)
    say(f"fleet server data ready in {data_dir}; the line above is an admin token "
        "(shown once). Next:")
    for step in steps:
        say(f"  {step}")


def _seed_store(source: Path, data_dir: Path, passphrase_env: str | None) -> None:
    from fleetup.repository import passphrase_from_env
    from fleetup.server import init_store

    init_store(source, data_dir, passphrase_from_env(passphrase_env))


def _next_steps(data_dir: Path, has_store: bool) -> list[str]:
    """What an operator runs next, in order, with this data directory filled in."""
    data = shlex.quote(str(data_dir))
    push = ("FLEETUP_TOKEN=<the token above> fleetup release push --repo REPO --app APP "
            "--version VERSION --server http://127.0.0.1:8000")
    if has_store:
        return [f"fleetup server --data {data}",
                f"fleetup admin enrollment-token create --data {data}", push]
    return [f"fleetup admin repo init --from REPO --data {data}",
            f"fleetup server --data {data}", push]


@admin.group()
def token() -> None:
    """Operator API tokens."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "publisher", "viewer"]))
@click.option("--name", default="", help="A name for the audit log.")
@_data_option
@_db_option
@json_option
def token_create(role: str, name: str, data_dir: Path, db_url: str | None,
                 as_json: bool) -> None:
    """Create an operator token and print it (it is not stored, only its hash)."""
    from fleetup.server import _crud
    from fleetup.server._auth import Role

    _require_server_data(data_dir, db_url)
    with _session(data_dir, db_url) as session:
        row, secret = _crud.create_operator_token(session, role=Role(role), name=name,
                                                  created_by=_actor())
        _crud.add_audit(session, actor=_actor(), action="token.create",
                        target=f"token:{row.id}", details={"role": role, "name": row.name})
        session.commit()
    if as_json:
        emit_json({"id": row.id, "name": row.name, "role": role, "token": secret})
    else:
        click.echo(secret)


@admin.group("enrollment-token")
def enrollment_token() -> None:
    """Tokens devices trade for their own device token."""


@enrollment_token.command("create")
@click.option("--name", default="", help="A name for the audit log.")
@click.option("--max-uses", type=click.IntRange(min=1), default=None,
              help="How many devices may enroll with it. [default: unlimited]")
@_data_option
@_db_option
@json_option
def enrollment_token_create(name: str, max_uses: int | None, data_dir: Path,
                            db_url: str | None, as_json: bool) -> None:
    """Create an enrollment token and print it."""
    from fleetup.server import _crud

    _require_server_data(data_dir, db_url)
    with _session(data_dir, db_url) as session:
        row, secret = _crud.create_enrollment_token(session, name=name, created_by=_actor(),
                                                    max_uses=max_uses)
        _crud.add_audit(session, actor=_actor(), action="enrollment_token.create",
                        target=f"enrollment_token:{row.id}")
        session.commit()
    if as_json:
        emit_json({"id": row.id, "name": row.name, "token": secret})
    else:
        click.echo(secret)


@admin.group()
def repo() -> None:
    """The server's release store."""


@repo.command("init")
@click.option("--from", "source", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The publisher's repository (made by `fleetup repo init`).")
@_data_option
@passphrase_option
@json_option
def repo_init(source: Path, data_dir: Path, passphrase_env: str | None, as_json: bool) -> None:
    """Seed the release store from REPO: its metadata and files, and only the snapshot
    and timestamp keys. Root and targets keys stay with the publisher."""
    from fleetup.repository import passphrase_from_env
    from fleetup.server import init_store

    layout = init_store(source, data_dir, passphrase_from_env(passphrase_env))
    if as_json:
        emit_json({"repo": str(layout.root), "keys": str(data_dir / "keys")})
    else:
        say(f"release store ready in {layout.root}; online keys in {data_dir / 'keys'}")


def _require_server_data(data_dir: Path, db_url: str | None) -> None:
    """Refuse to make a new, empty database where no server keeps its data: a token
    printed for it would open no server (a mistyped or forgotten ``--data``).

    Server data is the database file, or a data directory a server or ``admin repo
    init`` has prepared (its release store, ``repo/``). A non-SQLite ``--db`` is taken
    as given: its server made it.

    Raises:
        UsageError: there is no server data there; the message names the path.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from fleetup.errors import UsageError

    if db_url is None:
        if (data_dir / "fleetup.db").is_file() or (data_dir / "repo").is_dir():
            return
        raise UsageError(f"no fleet server data in {data_dir.resolve()}: pass the server's "
                         "--data DIR (or --db URL); this command does not create a database")
    try:
        url = make_url(db_url)
    except ArgumentError as e:
        raise UsageError(f"--db {db_url!r} is not a database URL: {e}") from e
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database or "")
        if not path.is_file():
            raise UsageError(f"no fleet server database at {path.resolve()}: pass the "
                             "server's --db URL; this command does not create a database")


@contextmanager
def _session(data_dir: Path, db_url: str | None) -> Iterator[Session]:
    """The server database, upgraded to the current schema, as a session."""
    from sqlalchemy.orm import Session

    from fleetup.server import make_engine, upgrade_database
    from fleetup.server._settings import sqlite_url

    engine = make_engine(db_url or sqlite_url(data_dir))
    try:
        upgrade_database(engine)
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()
