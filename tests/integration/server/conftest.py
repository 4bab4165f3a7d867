"""Fixtures of the fleet-server integration tests: each test runs against SQLite and
against a real PostgreSQL (a throwaway cluster, see tests/support/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from fleetup.repository import init_repo
from fleetup.server import _crud, init_store, make_engine, upgrade_database
from fleetup.server._auth import Role
from tests.support.fleet import FleetServer, SimDevice, cli, publish
from tests.support.postgres import PostgresCluster, postgres_cluster

__all__ = ["postgres_cluster"]


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _new_database(request: pytest.FixtureRequest, base: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{base / 'data' / 'fleetup.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: an SQLite file, then a PostgreSQL database."""
    return _new_database(request, tmp_path)


@pytest.fixture
def pg_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.new_database()


def make_tokens(db_url: str) -> dict[str, str]:
    """Operator tokens of each role and one enrollment token, made on the database."""
    engine = make_engine(db_url)
    upgrade_database(engine)
    tokens: dict[str, str] = {}
    with Session(engine) as session:
        for role in Role:
            _, tokens[role.value] = _crud.create_operator_token(
                session, role=role, name=f"test-{role}", created_by="test")
        _, tokens["enroll"] = _crud.create_enrollment_token(session, name="test",
                                                            created_by="test")
        session.commit()
    engine.dispose()
    return tokens


@dataclass
class Fleet:
    """A publisher repository with releases 1.0-1.2, a server seeded from it when it had
    only 1.0 (push 1.1 and 1.2 to publish them, one release a push), operator and
    enrollment tokens."""

    server: FleetServer
    repo: Path
    work: Path
    tokens: dict[str, str]

    def push(self, version: str, app: str = "hello") -> int:
        """``fleetup release push`` (in process); returns its exit code."""
        return cli("release", "push", "--repo", str(self.repo), "--app", app, "--version",
                   version, "--server", self.server.url, token=self.tokens["publisher"],
                   check=False).returncode

    def device(self, **kwargs: object) -> SimDevice:
        device = SimDevice(self.server.url, **kwargs)  # type: ignore[arg-type]
        return device.enroll(self.tokens["enroll"])


def build_fleet(tmp_path: Path, db_url: str, env: dict[str, str] | None = None,
                workers: int = 1, args: tuple[str, ...] = ()) -> Fleet:
    repo, work, data = tmp_path / "pub", tmp_path / "work", tmp_path / "data"
    init_repo(repo)
    publish(repo, work, "1.0")
    init_store(repo, data)  # the server starts with 1.0; 1.1 and 1.2 wait to be pushed
    for version in ("1.1", "1.2"):  # signed for beta too: 1.0 is for stable only
        publish(repo, work, version, channels=("stable", "beta"))
    tokens = make_tokens(db_url)
    server = FleetServer(data, db_url, env or {}, workers, args=args).start()
    return Fleet(server, repo, work, tokens)


@pytest.fixture
def fleet(tmp_path: Path, db_url: str) -> Iterator[Fleet]:
    """A fleet of its own for a test that changes rollouts or restarts the server."""
    built = build_fleet(tmp_path, db_url)
    try:
        yield built
    finally:
        built.server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def shared_fleet(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One fleet per test module and database, for tests that only add devices/tokens."""
    base = tmp_path_factory.mktemp("fleet")
    built = build_fleet(base, _new_database(request, base))
    try:
        yield built
    finally:
        built.server.stop()
