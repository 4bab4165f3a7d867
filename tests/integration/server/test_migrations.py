"""A database made by the first migration, with data in it, is upgraded on start."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from fleetup.repository import init_repo
from fleetup.server import init_store, make_engine, upgrade_database
from fleetup.server._auth import hash_token
from fleetup.server._db import current_revision, head_revision
from tests.support.fleet import FleetServer, SimDevice, publish


def test_server_upgrades_a_first_revision_database(tmp_path: Path, db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_database(engine, "0001")
    assert current_revision(engine) == "0001"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        assert "previous_version" not in {
            c["name"] for c in sa.inspect(conn).get_columns("devices")}
        conn.execute(sa.text(
            "INSERT INTO devices (id, app, platform, channel, tags, version, state, "
            "token_hash, enrolled_at) VALUES ('old1', 'hello', 'linux-x86_64', 'stable', "
            "'{\"site\": \"a\"}', '1.0', 'idle', :h, :now)"),
            {"h": hash_token("fud_old-device-token"), "now": now})
        conn.execute(sa.text(
            "INSERT INTO events (device_id, event_id, type, at, received_at, version, "
            "reason, details) VALUES ('old1', 'e1', 'committed', :now, :now, '1.0', '', "
            "'{}')"), {"now": now})
    engine.dispose()

    repo = tmp_path / "pub"
    init_repo(repo)
    publish(repo, tmp_path / "work", "1.0")
    init_store(repo, tmp_path / "data")
    server = FleetServer(tmp_path / "data", db_url).start()
    try:
        device = SimDevice(server.url, device_id="old1", version="1.0",
                           token="fud_old-device-token", tags={"site": "a"})
        assert device.checkin()["action"] == "none"
        engine = make_engine(db_url)
        assert current_revision(engine) == head_revision() != "0001"
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT version, previous_version FROM devices WHERE id = 'old1'")).one()
            assert tuple(row) == ("1.0", None)
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 1
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("events")}
            assert "ix_events_rollout_type" in indexes
        engine.dispose()
    finally:
        server.stop()
