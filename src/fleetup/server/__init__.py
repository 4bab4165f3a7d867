"""The fleet server: release store, device registry, check-ins, events, staged rollouts.

Never imports ``fleetup.agent`` or ``fleetup.cli``. Needs the ``server`` extra
(FastAPI, SQLAlchemy, Alembic, psycopg).
"""

from sqlalchemy.orm import Session

from fleetup.server._app import create_app
from fleetup.server._db import make_engine, upgrade_database
from fleetup.server._operations import sync_releases
from fleetup.server._settings import Settings
from fleetup.server._store import ReleaseStore, init_store

__all__ = ["ReleaseStore", "Settings", "create_app", "init_store", "make_engine",
           "prepare_database", "upgrade_database"]


def prepare_database(settings: Settings) -> None:
    """What ``fleetup server`` does once before its workers start: upgrade the schema,
    then record the releases of a store seeded by ``fleetup admin repo init``.

    Raises:
        StorageError: the database refused.
        RepositoryError: the release store's metadata is corrupt.
    """
    engine = make_engine(settings.database_url)
    try:
        upgrade_database(engine)
        with Session(engine) as session:
            sync_releases(session, ReleaseStore(settings.data_dir))
    finally:
        engine.dispose()
