"""SIGKILL the agent during an update — in every named state, and at random instants.

After each kill, ``current`` must point at a complete release, byte-for-byte one of the
published trees, and the next ``fleetup agent update`` must finish the job. These are
real processes (``fleetup agent`` subprocesses against a real HTTP server), killed the
way a power cut would kill them.

Named kills use failpoints (``FLEETUP_FAILPOINTS``): the agent kills itself right after
persisting the named state (``state:<name>``) or at a named point inside a step.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetup._manifest import scan_tree
from tests.support.device import (
    FLEETUP,
    clone_device,
    current_digest,
    dir_fingerprint,
    new_repo,
    publish,
    run_agent,
    write_config,
)
from tests.support.http import serve_directory

RANDOM_TRIALS = int(os.environ.get("FLEETUP_CRASH_TRIALS", "50"))


@dataclass
class World:
    repo: Path
    url: str
    trusted_root: Path
    baseline: Path          # a device with 1.0.0 installed, to clone per trial
    digests: dict[str, str]
    work: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("crash")
    repo = new_repo(work / "repo")
    digests = {}
    for version, kwargs in [
        ("1.0.0", {"channels": ("stable", "beta")}),
        ("1.1.0", {"channels": ("stable", "beta"), "health_sleep": 0.2}),
        ("1.2.0", {"channels": ("beta",), "health_exit": 3}),  # broken, beta only
    ]:
        published = publish(repo, work, version, files=60, file_size=16384, seed=7,
                            **kwargs)  # type: ignore[arg-type]
        digests[version] = published.digest
    with serve_directory(repo / "public", work) as server:
        baseline = work / "baseline"
        config = write_config(work / "baseline.toml", baseline, server.url,
                              repo / "public/metadata" / "1.root.json")
        first = run_agent(config, "update", "--version", "1.0.0")
        assert first.returncode == 0, first.stderr
        (baseline / "data" / "user.db").write_bytes(b"precious user data" * 100)
        yield World(repo, server.url, repo / "public/metadata" / "1.root.json", baseline, digests,
                    work)


def _device(world: World, tmp_path: Path, channel: str = "stable") -> tuple[Path, Path]:
    root = clone_device(world.baseline, tmp_path / "device")
    config = write_config(tmp_path / "agent.toml", root, world.url, world.trusted_root,
                          channel=channel)
    return root, config


def _journal_state(root: Path) -> str:
    return str(json.loads((root / ".fleetup" / "journal.json").read_text())["state"])


def _assert_intact(world: World, root: Path) -> None:
    digest = current_digest(root)
    assert digest in world.digests.values(), "current is not a complete published release"
    assert dir_fingerprint(root / "data") == dir_fingerprint(world.baseline / "data")


def _assert_finished(world: World, root: Path, config: Path, expect: str) -> None:
    """The next update(s) finish the job: at most two runs reach ``expect``."""
    for _ in range(2):
        result = run_agent(config, "update", "--no-progress")
        assert result.returncode in (0, 20), result.stderr
        if current_digest(root) == world.digests[expect]:
            break
    assert current_digest(root) == world.digests[expect]
    assert _journal_state(root) == "idle"
    assert not list((root / "releases").glob("*.partial"))
    _assert_intact(world, root)


UPDATE_POINTS = [
    "state:downloading", "state:verified", "stage:unpacked", "stage:manifest-saved",
    "state:staged", "state:switched", "state:health-checking", "state:committed",
    "record:history-written",
]


@pytest.mark.parametrize("point", UPDATE_POINTS)
def test_kill_in_each_state_of_an_update(world: World, tmp_path: Path, point: str) -> None:
    root, config = _device(world, tmp_path)
    killed = run_agent(config, "update", "--no-progress", env={"FLEETUP_FAILPOINTS": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point.startswith("state:"):
        assert _journal_state(root) == point.removeprefix("state:")
    _assert_intact(world, root)
    _assert_finished(world, root, config, "1.1.0")
    history = [r for r in json.loads(run_agent(config, "history", "--json").stdout)
               if r["result"] == "committed" and r["to"] == "1.1.0"]
    assert len(history) == 1, "a handler that ran twice recorded its update twice"


ROLLBACK_POINTS = ["state:health-checking", "state:rolling-back", "rollback:switched",
                   "state:rolled-back", "record:history-written"]


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_kill_while_rolling_back_a_broken_release(world: World, tmp_path: Path,
                                                  point: str) -> None:
    root, config = _device(world, tmp_path, channel="beta")
    killed = run_agent(config, "update", "--no-progress", env={"FLEETUP_FAILPOINTS": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _assert_intact(world, root)
    # Whatever was interrupted, the broken 1.2.0 ends rolled back and remembered, and
    # the newest good release on the channel is what runs.
    for _ in range(3):
        run_agent(config, "update", "--no-progress")
    status = json.loads(run_agent(config, "status", "--json").stdout)
    assert status["version"] == "1.1.0"
    assert [f["version"] for f in status["failed"]] == ["1.2.0"]
    _assert_intact(world, root)
    assert current_digest(root) == world.digests["1.1.0"]


def _staged_digest(root: Path, version: str) -> str:
    return scan_tree(root / "releases" / version).digest()


def test_a_kill_while_staged_and_waiting_neither_switches_nor_discards(
        world: World, tmp_path: Path) -> None:
    root, config = _device(world, tmp_path)
    killed = run_agent(config, "update", "--download-only", "--no-progress",
                       env={"FLEETUP_FAILPOINTS": "state:ready"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for again in (("status", "--json"), ("update", "--download-only", "--no-progress")):
        assert run_agent(config, *again).returncode == 0
        assert _journal_state(root) == "ready"
        assert current_digest(root) == world.digests["1.0.0"]
        assert _staged_digest(root, "1.1.0") == world.digests["1.1.0"]
    applied = run_agent(config, "apply")
    assert applied.returncode == 0, applied.stderr
    assert current_digest(root) == world.digests["1.1.0"]
    assert _journal_state(root) == "idle"
    _assert_intact(world, root)


@pytest.mark.parametrize("point", ["state:staged", "state:switched"])
def test_kill_while_applying(world: World, tmp_path: Path, point: str) -> None:
    root, config = _device(world, tmp_path)
    assert run_agent(config, "update", "--download-only", "--no-progress").returncode == 0
    killed = run_agent(config, "apply", env={"FLEETUP_FAILPOINTS": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _assert_intact(world, root)
    # Before the switch the next apply finishes it; past it the switch is undone (not
    # blamed) and the tree stays kept, so the next update installs it with no download.
    resumed = run_agent(config, "apply")
    assert resumed.returncode == 0, resumed.stderr
    _assert_intact(world, root)
    if point == "state:staged":
        assert current_digest(root) == world.digests["1.1.0"]
    _assert_finished(world, root, config, "1.1.0")


def _measure_update(world: World, tmp_path: Path) -> tuple[float, float]:
    """When, after the process starts, the update begins (journal leaves idle) and ends."""
    root, config = _device(world, tmp_path / "measure")
    journal = root / ".fleetup" / "journal.json"
    started = time.monotonic()
    process = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "update",
                                "--no-progress"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    begin = None
    while process.poll() is None:
        if begin is None and journal.exists() and _journal_state(root) != "idle":
            begin = time.monotonic() - started
        time.sleep(0.002)
    end = time.monotonic() - started
    assert process.returncode == 0
    assert begin is not None, "never saw the update start"
    return begin, end


def _wait_for_update_start(root: Path, process: subprocess.Popen[bytes]) -> None:
    while process.poll() is None:
        try:
            if _journal_state(root) != "idle":
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.001)


@pytest.mark.slow
def test_sigkill_at_random_instants(world: World, tmp_path: Path) -> None:
    begin, end = _measure_update(world, tmp_path)
    rng = random.Random(20261123)
    states_hit: dict[str, int] = {}
    for trial in range(RANDOM_TRIALS):
        trial_dir = tmp_path / f"t{trial}"
        trial_dir.mkdir()
        root, config = _device(world, trial_dir)
        process = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "update",
                                    "--no-progress"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if trial % 5 == 0:
            # Anywhere in the run: start-up and the TUF metadata refresh included.
            time.sleep(rng.uniform(0, end))
        else:
            # Within the update proper: timed from when the journal leaves idle, which
            # does not depend on how long the interpreter took to start on a busy machine.
            _wait_for_update_start(root, process)
            time.sleep(rng.uniform(0, end - begin))
        process.send_signal(signal.SIGKILL)
        process.wait()
        journal = root / ".fleetup" / "journal.json"
        state = _journal_state(root) if journal.exists() else "idle"
        states_hit[state] = states_hit.get(state, 0) + 1
        _assert_intact(world, root)
        _assert_finished(world, root, config, "1.1.0")
    print(f"\n{RANDOM_TRIALS} random kills over an update from {begin:.2f}s to {end:.2f}s; "
          f"states at the kill: {states_hit}")
    # The kills must have landed inside the update, not only before or after it.
    assert len(states_hit) >= 3, states_hit
