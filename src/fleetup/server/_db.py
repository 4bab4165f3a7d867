"""Database engines, sessions, and the schema upgrade every server start runs.

SQLite (the zero set-up default) runs in WAL mode with a busy timeout, so two worker
processes can share the file; PostgreSQL is used through psycopg 3. The upgrade takes a
lock first (a PostgreSQL advisory lock, or a file lock beside the SQLite file), so
several servers starting at once on one database migrate it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fleetup.errors import StorageError, UsageError

__all__ = ["current_revision", "head_revision", "make_engine", "make_sessionmaker",
           "upgrade_database"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_KEY = 0x666C_7570  # "flup": the advisory lock id of schema upgrades


def make_engine(url: str) -> Engine:
    """An engine for ``url``: ``sqlite:///FILE`` or ``postgresql+psycopg://...``.

    Raises:
        UsageError: the URL is malformed or names a database fleetup does not support.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise UsageError(f"not a database URL: {url!r}") from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                     "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, pool_size=8, max_overflow=8, pool_pre_ping=True)
    raise UsageError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration shipped with this fleetup."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest), once across processes.

    Raises:
        StorageError: the database refused (unreachable, permissions, disk full).
    """
    try:
        with _migration_lock(engine), engine.connect() as connection:
            command.upgrade(_alembic_config(connection), revision)
            connection.commit()
    except SQLAlchemyError as e:
        raise StorageError(f"cannot upgrade the database schema: {e}") from e


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as lock_connection:
            lock_connection.execute(text("SELECT pg_advisory_lock(:k)"),
                                    {"k": _MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                lock_connection.execute(text("SELECT pg_advisory_unlock(:k)"),
                                        {"k": _MIGRATION_LOCK_KEY})
                lock_connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
