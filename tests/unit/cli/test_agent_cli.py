"""``fleetup agent`` through ``fleetup.cli.main``: the commands that need no network.

The device root is prepared in-process (an agent over a FakeSource); the CLI then reads
and changes it as it would on a device. The HTTP paths (check/update/run against a
served repository) are covered by real-process tests in ``tests/integration/``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetup.cli import main
from tests.support.fake_source import agent_over
from tests.support.releases import SampleRepo


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., "Ran"]


pytestmark = pytest.mark.usefixtures("no_fsync")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The agent commands configure the ``fleetup`` logger; put it back afterwards."""
    logger = logging.getLogger("fleetup")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device root with 1.0 and 1.1 installed (1.1 current)."""
    repo = SampleRepo.create(tmp_path_factory.mktemp("agent-cli"))
    repo.publish("1.0")
    repo.publish("1.1")
    device = repo.path.parent / "device"
    agent, _ = agent_over(repo.path, device)
    agent.update(wanted="1.0")
    agent.update(wanted="1.1")
    return device


@pytest.fixture
def device(prepared: Path, tmp_path: Path) -> Path:
    root = tmp_path / "device"
    shutil.copytree(prepared, root, symlinks=True)
    return root


def config_file(tmp_path: Path, root: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'app = "hello"\nroot = "{root}"\nplatform = "linux-x86_64"\n'
                    f'repo_url = "http://127.0.0.1:9/"\n'
                    f'trusted_root = "{tmp_path / "no-such-root.json"}"\n'
                    f'device_id = "device-0001"\n' + extra)
    return path


@pytest.fixture
def agent(capsys: pytest.CaptureFixture[str], tmp_path: Path, device: Path) -> Run:
    """``fleetup agent -c <config for the prepared device> ARGS...``"""
    config = config_file(tmp_path, device)

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(["agent", "-c", str(config), *args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def test_status_json(agent: Run) -> None:
    ran = agent("status", "--json")
    assert ran.code == 0
    body = ran.json
    assert {"version", "state", "last_check", "pending"} <= set(body)
    assert (body["version"], body["state"]) == ("1.1", "idle")
    assert body["last_check"] is not None
    assert body["pending"] is None
    assert body["kept"] == ["1.0", "1.1"]
    assert body["app"] == "hello"
    assert body["device_id"] == "device-0001"


def test_status_for_people(agent: Run) -> None:
    ran = agent("status")
    assert ran.code == 0
    assert "hello 1.1 — idle" in ran.out
    assert "kept: 1.0, 1.1" in ran.out


def test_status_with_nothing_installed(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    config = config_file(tmp_path, tmp_path / "fresh")
    assert main(["agent", "-c", str(config), "status", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["version"], body["state"], body["last_check"], body["pending"]) == (
        None, "idle", None, None)
    assert body["failed"] == []


def test_status_names_a_failed_release(agent: Run, device: Path) -> None:
    (device / ".fleetup" / "failed.json").write_text('{"1.2": "health command exited 3"}')
    assert agent("status", "--json").json["failed"] == [
        {"version": "1.2", "reason": "health command exited 3"}]
    assert "not installed again by itself: 1.2 (health command exited 3)" in agent(
        "status").out


def test_history(agent: Run) -> None:
    ran = agent("history", "--json")
    assert ran.code == 0
    assert [(r["result"], r["to"]) for r in ran.json] == [("committed", "1.0"),
                                                         ("committed", "1.1")]
    table = agent("history")
    assert table.code == 0
    assert "committed" in table.out


def test_rollback_and_its_errors(agent: Run) -> None:
    ran = agent("rollback", "--to", "1.0", "--json")
    assert ran.code == 0
    assert (ran.json["result"], ran.json["version"]) == ("reverted", "1.0")
    assert agent("status", "--json").json["version"] == "1.0"
    ran = agent("rollback", "--to", "9.9")
    assert ran.code == 1
    assert ran.err.startswith("error: 9.9 is not a kept release here")
    assert ran.err.count("\n") == 1
    assert "Traceback" not in ran.err
    ran = agent("rollback")
    assert ran.code == 0
    assert "now running 1.1" in ran.out


def test_verify_exit_codes(agent: Run, device: Path) -> None:
    ran = agent("verify")
    assert ran.code == 0
    assert "1.0: intact" in ran.out
    assert "1.1: intact" in ran.out
    (device / "releases" / "1.0" / "VERSION").write_text("tampered\n")
    ran = agent("verify", "--json")
    assert ran.code == 30
    assert ran.json == {"checked": ["1.0", "1.1"], "damaged": {"1.0": ["VERSION"]},
                        "repaired": []}
    ran = agent("verify")
    assert ran.code == 30
    assert "1.0: damaged (1 entries)" in ran.out


def test_network_commands_fail_with_one_line_and_change_nothing(agent: Run,
                                                                device: Path) -> None:
    before = agent("status", "--json").json
    for command in ("check", "update"):
        ran = agent(command)
        assert ran.code == 1, command
        assert ran.err.startswith("error: "), ran.err
        assert ran.err.count("\n") == 1, ran.err
    after = agent("status", "--json").json
    assert (after["version"], after["state"], after["kept"]) == (
        before["version"], before["state"], before["kept"])


def test_one_shot_commands_log_what_they_change_or_refuse(agent: Run, device: Path) -> None:
    """Issue 11 §3: one-shot commands log to the daemon's ``agent.log``, while the console
    keeps its one error line."""
    log = device / ".fleetup" / "log" / "agent.log"
    assert agent("rollback", "--to", "1.0").code == 0
    ran = agent("check")
    assert ran.code == 1
    assert ran.err.count("\n") == 1, ran.err
    text = log.read_text()
    assert "rollback 1.0: rolled-back (rolled back by the operator)" in text
    assert "check refused: " in text


def test_a_bad_config_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = config_file(tmp_path, tmp_path / "device", extra="[policy]\nwindow = \"late\"\n")
    assert main(["agent", "-c", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: policy.window:")
    assert err.count("\n") == 1
    assert main(["agent", "-c", str(tmp_path / "missing.toml"), "status"]) == 1
    assert "config file not found" in capsys.readouterr().err


def test_another_agent_holding_the_lock(agent: Run, device: Path) -> None:
    from fleetup.agent._store import DeviceStore

    with DeviceStore(device).lock():
        ran = agent("rollback", "--to", "1.0")
        read_only = [agent(*command).code for command in (
            ("status",), ("history",), ("verify",), ("verify", "--json"))]
        repair = agent("verify", "--repair")
    assert ran.code == 1
    assert "another fleetup agent is working on" in ran.err
    assert read_only == [0, 0, 0, 0]  # issue 11 §3: reading needs no update lock
    assert repair.code == 1
    assert "another fleetup agent is working on" in repair.err


def test_a_missing_optional_package_names_the_extra_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    from fleetup.cli import main

    real_import = builtins.__import__

    def no_uvicorn(name: str, *args: object, **kwargs: object) -> object:
        if name == "uvicorn":
            raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    assert main(["server", "--data", "/nonexistent-fleetup-data"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: this command needs uvicorn: pip install 'fleetup[server]'"


def test_apply_with_nothing_staged_is_one_error_line_and_changes_nothing(
        agent: Run, device: Path) -> None:
    before = agent("status", "--json").json
    ran = agent("apply")
    assert ran.code == 1
    assert ran.err == ("error: nothing is staged to apply (`agent update --download-only` "
                       "stages a release)\n")
    after = agent("status", "--json").json
    assert (after["version"], after["state"], after["staged"], after["held"]) == (
        before["version"], "idle", None, None)
    assert after["apply"] == "now"
