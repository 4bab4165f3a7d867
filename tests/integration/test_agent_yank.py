"""A yank through the real CLI (issue 11 §2): it sends the device to a release its policy
allows (a kept tree first), never past it; with nowhere to go the device stays and says
so in ``status``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.device import (
    FLEETUP,
    current_digest,
    new_repo,
    publish,
    run_agent,
    write_config,
)
from tests.support.http import serve_directory


def _yank(repo: Path, version: str) -> None:
    done = subprocess.run([*FLEETUP, "release", "yank", "--repo", str(repo), "--app", "hello",
                           "--version", version, "--reason", "corrupts settings"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_yank_does_not_jump_past_the_policy(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    with serve_directory(repo / "public", tmp_path) as server:
        config = write_config(tmp_path / "agent.toml", tmp_path / "device", server.url,
                              repo / "public" / "metadata" / "1.root.json")
        v1 = publish(repo, tmp_path, "1.0.0", files=2)
        assert run_agent(config, "update", "--no-progress").returncode == 0
        publish(repo, tmp_path, "1.1.0", files=2)
        assert run_agent(config, "update", "--no-progress").returncode == 0
        publish(repo, tmp_path, "2.0.0", files=2)  # a major: held back by default

        _yank(repo, "1.1.0")
        moved = run_agent(config, "update", "--no-progress", "--json")
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["version"] == "1.0.0"  # the kept tree, not 2.0.0
        assert current_digest(tmp_path / "device") == v1.digest

        _yank(repo, "1.0.0")  # now nothing this device's policy allows is left
        stayed = run_agent(config, "update", "--no-progress", "--json")
        assert stayed.returncode == 0, stayed.stderr
        assert json.loads(stayed.stdout)["version"] == "1.0.0"
        status = json.loads(run_agent(config, "status", "--json").stdout)
        assert status["version"] == "1.0.0"
        assert status["running_yanked"] == "1.0.0 was yanked: corrupts settings"
        text = run_agent(config, "status").stdout
        assert "runs a yanked release: 1.0.0 was yanked: corrupts settings" in text
