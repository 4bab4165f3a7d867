"""``fleetup admin token|enrollment-token create`` through ``fleetup.cli.main``: they act
on an existing server's database, and refuse to invent one (issue 11 §3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetup.cli import main
from fleetup.server import make_engine, upgrade_database
from fleetup.server._settings import sqlite_url

COMMANDS = [("token", "create", "--role", "admin"), ("enrollment-token", "create")]


def admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["admin", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def server_data(data: Path) -> Path:
    """A data directory as a server leaves it: its database, at the current schema."""
    data.mkdir()
    engine = make_engine(sqlite_url(data))
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    return data


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_empty_folder_is_refused_naming_the_path(
        command: tuple[str, ...], capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = admin(capsys, *command)
    assert (code, out) == (1, "")
    assert err == (f"error: no fleet server data in {tmp_path / 'fleetup-data'}: pass the "
                   "server's --data DIR (or --db URL); this command does not create a "
                   "database\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_missing_sqlite_database_is_refused(command: tuple[str, ...],
                                               capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "fleetup.db"
    code, _, err = admin(capsys, *command, "--db", f"sqlite:///{missing}")
    assert code == 1
    assert err.startswith(f"error: no fleet server database at {missing}:")
    assert not missing.parent.exists()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_servers_data_gets_its_token(command: tuple[str, ...],
                                       capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    data = server_data(tmp_path / "data")
    code, out, _ = admin(capsys, *command, "--data", str(data))
    assert code == 0
    assert out.startswith(("fuo_", "fue_"))
    code, out, _ = admin(capsys, *command, "--db", sqlite_url(data))
    assert code == 0


def test_a_seeded_release_store_is_server_data(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    """``admin repo init`` before the server's first start (as the demo does) is enough."""
    data = tmp_path / "data"
    (data / "repo").mkdir(parents=True)
    code, out, _ = admin(capsys, "token", "create", "--role", "viewer", "--data", str(data))
    assert code == 0
    assert out.startswith("fuo_")
    assert (data / "fleetup.db").is_file()
