"""Self-update through its seams: who decides after probation, interrupted probations,
the proof marker, the config section, and journal formats across versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetup._agent_tree import AGENT_APP, agent_platform, pip_platform_args, write_launcher
from fleetup._versions import UpdateType
from fleetup.agent._agent import Result
from fleetup.agent._config import load_config
from fleetup.agent._lifecycle import Journal, State
from fleetup.agent._self_update import PROBATION_TRIES, SelfUpdateAgent, _Adopted, run_probation
from fleetup.errors import ConfigError, StateError, UsageError
from tests.support.fake_source import FakeSource
from tests.support.releases import SampleRepo
from tests.support.trees import File


def _config(tmp_path: Path, extra: str = "[self_update]\nroot = \"agent\"\ntimeout = 5\n") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'app = "hello"\nroot = "dev"\nrepo_url = "http://127.0.0.1:1/"\n'
                    f'trusted_root = "root.json"\n{extra}')
    return path


def _tree(tmp_path: Path, main: str) -> Path:
    tree = tmp_path / "agent" / "releases" / "2.0"
    (tree / "lib" / "fleetup").mkdir(parents=True)
    (tree / "lib" / "fleetup" / "__main__.py").write_text(main)
    write_launcher(tree)
    return tree


PROVES = """import json, os, sys
marker = sys.argv[sys.argv.index("--probation") + 1]
open(marker, "w").write(json.dumps({"version": "2.0", "pid": os.getpid()}))
"""


@pytest.fixture(autouse=True)
def _python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETUP_PYTHON", sys.executable)


@pytest.mark.parametrize(("main", "verdict"), [
    (PROVES, None),
    ("raise SystemExit(3)\n", "exited 3 on probation"),
    ("raise RuntimeError('broken on import')\n", "exited 1 on probation: RuntimeError"),
    ("import time; time.sleep(60)\n", "did not prove itself within 0.5s"),
    ("pass\n", "exited without writing its proof"),
    (PROVES.replace('"2.0"', '"9.9"'), "its proof is not of 2.0"),
    (PROVES.replace("os.getpid()", "1"), "its proof is not of 2.0"),
])
def test_the_old_agent_judges_the_probation(tmp_path: Path, main: str, verdict: str | None
                                            ) -> None:
    config = load_config(_config(tmp_path))
    tree = _tree(tmp_path, main)
    reason = run_probation(tree, "2.0", config, tmp_path / "logs", timeout=0.5)
    if verdict is None:
        assert reason is None
    else:
        assert reason is not None
        assert reason.startswith(verdict), reason


def test_an_interrupted_probation_is_retried_once_then_failed(tmp_path: Path) -> None:
    agent = SelfUpdateAgent(load_config(_config(tmp_path)))
    agent.store.ensure()
    marker = agent.store.layout.state / "probation.json"
    marker.write_text(json.dumps({"version": "2.0", "tries": 1}))
    assert agent._probation_tries("2.0") == 1      # one crash: tried again
    assert agent._probation_tries("3.0") == 0      # another version starts afresh
    marker.write_text(json.dumps({"version": "2.0", "tries": PROBATION_TRIES}))
    reason = agent._probation("2.0")               # decided without starting the child
    assert reason == f"its probation was interrupted {PROBATION_TRIES} times (crash or reboot)"
    assert not marker.exists()


def test_the_config_section(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.self_update is not None
    assert config.self_update.root == (tmp_path / "agent").resolve()
    assert config.self_update.timeout == 5
    assert load_config(_config(tmp_path, "")).self_update is None
    with pytest.raises(ConfigError, match=r"unknown key self_update\.rooot"):
        load_config(_config(tmp_path, "[self_update]\nrooot = \"x\"\n"))
    with pytest.raises(ConfigError, match=r"missing required key 'self_update\.root'"):
        load_config(_config(tmp_path, "[self_update]\ntimeout = 3\n"))


def test_platforms_pip_can_target() -> None:
    args = pip_platform_args("cp312-linux-aarch64")
    assert args[args.index("--abi") + 1] == "cp312"
    assert "manylinux2014_aarch64" in args
    with pytest.raises(UsageError, match="cannot build an agent tree for 'win-amd64'"):
        pip_platform_args("win-amd64")


def test_an_adopted_app_is_waited_for_like_a_child() -> None:
    child = subprocess.Popen(["sleep", "30"])
    adopted = _Adopted(child.pid)
    assert adopted.poll() is None
    os.kill(child.pid, 15)
    assert adopted.wait(timeout=10) == -15


def test_journal_formats_across_versions() -> None:
    newer_minor = json.loads(Journal(state=State.STAGED, target="2.0").to_json())
    newer_minor["a_field_from_the_future"] = {"x": 1}
    assert Journal.from_json(json.dumps(newer_minor).encode()).state is State.STAGED
    older = {k: v for k, v in newer_minor.items() if k in ("state", "target")}
    assert Journal.from_json(json.dumps(older).encode()).target == "2.0"  # no format: 1
    newer_major = {**newer_minor, "format": 2}
    with pytest.raises(StateError, match=r"written by a newer fleetup \(format 2\); this one "
                                         r"reads format 1"):
        Journal.from_json(json.dumps(newer_major).encode())


def _agent_release(repo: SampleRepo, version: str, main: str) -> None:
    launcher = write_launcher(repo.work / f"launcher-{version}").read_bytes()
    repo.publish(version, app=AGENT_APP, platform=agent_platform(), health=False,
                 update_type=UpdateType.PATCH, extra={
                     "bin/fleetup": File(launcher, 0o755),
                     "lib/fleetup/__main__.py": main.replace("2.0", version)})


@pytest.mark.parametrize(("main", "installed", "failed"), [
    (PROVES, "1.0.1", False),
    ("raise RuntimeError('broken on import')\n", "1.0.0", True),
])
def test_the_agent_root_switches_only_after_the_proof(tmp_path: Path, main: str,
                                                      installed: str, failed: bool) -> None:
    """Through the state machine: the switch waits for the verdict; a refused release is
    removed and remembered as failed, and the next cycle does not try it again."""
    repo = SampleRepo.create(tmp_path)
    _agent_release(repo, "1.0.0", PROVES)
    config = load_config(_config(tmp_path))
    source = FakeSource(repo.path)
    agent = SelfUpdateAgent(config, source_factory=lambda: source)
    assert agent.update().result is Result.INSTALLED
    _agent_release(repo, "1.0.1", main)
    outcome = agent.update()
    assert agent.store.installed_version() == installed
    assert ("1.0.1" in agent.store.failed()) is failed
    assert (agent.store.layout.release_dir("1.0.1").exists()) is not failed
    if failed:
        assert outcome.result is Result.FAILED
        assert agent.update().result is Result.NOTHING   # not retried by itself
