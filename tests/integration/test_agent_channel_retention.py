"""Channel switching on the device and retention by age, through the real agent CLI
against a repository served on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.device import current_digest, new_repo, publish, run_agent, write_config
from tests.support.http import StaticServer, serve_directory


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, StaticServer]]:
    repo = new_repo(tmp_path / "repo")
    with serve_directory(repo / "public", tmp_path) as server:
        yield repo, server


def _config(tmp_path: Path, repo: Path, server: StaticServer, top: str = "") -> Path:
    path = write_config(tmp_path / "agent.toml", tmp_path / "device", server.url,
                        repo / "public/metadata/1.root.json")
    path.write_text(top + path.read_text())  # top-level keys before the first table
    return path


def _status(config: Path) -> dict[str, object]:
    shown = run_agent(config, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


def test_channel_switch_is_persistent_and_downgrades_only_when_asked(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    repo, server = served
    config = _config(tmp_path, repo, server)
    device = tmp_path / "device"
    publish(repo, tmp_path, "1.0.0")
    canary = publish(repo, tmp_path, "1.5.0", channels=("canary",))
    assert run_agent(config, "update", "--no-progress").returncode == 0  # stable: 1.0.0

    switched = run_agent(config, "channel", "canary")
    assert switched.returncode == 0, switched.stderr
    assert "channel canary (set on this device)" in switched.stdout
    assert (_status(config)["channel"], _status(config)["channel_source"]) == (
        "canary", "device")
    assert run_agent(config, "update", "--no-progress").returncode == 0
    assert current_digest(device) == canary.digest

    stable = publish(repo, tmp_path, "1.1.0")
    assert run_agent(config, "channel", "stable").returncode == 0
    assert run_agent(config, "check").returncode == 0  # 1.1.0 is older: not offered
    assert run_agent(config, "update", "--no-progress").returncode == 0
    assert current_digest(device) == canary.digest  # no downgrade by itself

    down = run_agent(config, "channel", "--downgrade", "--json")
    assert down.returncode == 0, down.stderr
    body = json.loads(down.stdout)
    assert body["channel"] == "stable"
    assert body["result"]["result"] == "installed"
    assert body["result"]["version"] == "1.1.0"
    assert current_digest(device) == stable.digest
    assert _status(config)["version"] == "1.1.0"

    reset = run_agent(config, "channel", "--reset", "--json")
    assert json.loads(reset.stdout) == {"channel": "stable", "source": "config",
                                        "config_channel": "stable"}
    assert _status(config)["channel_source"] == "config"


def test_a_bad_channel_name_is_one_error_line(tmp_path: Path,
                                              served: tuple[Path, StaticServer]) -> None:
    repo, server = served
    config = _config(tmp_path, repo, server)
    bad = run_agent(config, "channel", "../etc")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: ")
    assert "\n" not in bad.stderr.strip()
    assert _status(config)["channel"] == "stable"


def test_keep_days_prunes_old_trees_but_not_current_nor_previous(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    repo, server = served
    config = _config(tmp_path, repo, server, top="keep = 5\nkeep_days = 1\n")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        publish(repo, tmp_path, version)
        assert run_agent(config, "update", "--no-progress").returncode == 0
    assert _status(config)["kept"] == ["1.0.0", "1.1.0", "1.2.0"]  # all young

    # Ten days pass: the history says when each release stopped being current.
    history = tmp_path / "device/.fleetup/history.jsonl"
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat(timespec="seconds")
    records = [json.loads(line) for line in history.read_text().splitlines()]
    history.write_text("".join(json.dumps({**r, "finished_at": old}) + "\n" for r in records))

    assert run_agent(config, "update", "--no-progress").returncode == 0  # nothing new
    assert _status(config)["kept"] == ["1.1.0", "1.2.0"]  # 1.1.0: the previous one
    assert not (tmp_path / "device/releases/1.0.0").exists()
