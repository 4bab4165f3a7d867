"""``fleetup repo serve`` is a complete static-mode source for a real agent, and
``keys rotate --online`` gets that agent out of a fast-forward lock-out."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.device import FLEETUP, current_digest, publish, run_agent, write_config
from tests.support.online_keys import resign_online


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    repo = tmp_path / "repo"
    subprocess.run([*FLEETUP, "repo", "init", str(repo)], check=True, capture_output=True)
    process = subprocess.Popen([*FLEETUP, "repo", "serve", str(repo), "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert " at http://127.0.0.1:" in line, line
        yield repo, line.split(" at ")[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_agent_locked_out_by_fast_forward_updates_after_rotate_online(
        served: tuple[Path, str], tmp_path: Path) -> None:
    repo, url = served
    public = repo / "public"
    first = publish(repo, tmp_path, "1.0.0")
    device = tmp_path / "device"
    config = write_config(tmp_path / "agent.toml", device, url,
                          public / "metadata" / "1.root.json")
    assert run_agent(config, "update").returncode == 0
    assert current_digest(device) == first.digest

    genuine = (public / "metadata" / "timestamp.json").read_bytes()
    resign_online(public, repo / "keys", 1000, 1000)
    assert run_agent(config, "check").returncode == 1  # trusts the forged versions now
    (public / "metadata" / "timestamp.json").write_bytes(genuine)
    (public / "metadata" / "1000.snapshot.json").unlink()
    second = publish(repo, tmp_path, "1.1.0")
    locked = run_agent(config, "update")
    assert locked.returncode == 1
    assert "older than this device already trusts" in locked.stderr

    rotate = subprocess.run([*FLEETUP, "keys", "rotate", "--repo", str(repo), "--online"],
                            capture_output=True, text=True, check=False)
    assert rotate.returncode == 0, rotate.stderr
    updated = run_agent(config, "update")
    assert updated.returncode == 0, updated.stderr
    assert current_digest(device) == second.digest
