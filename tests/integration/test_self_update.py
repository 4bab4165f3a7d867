"""fleetup updates itself, for real: wheels built from this checkout at two versions and a
broken third, published with ``release add-agent``, and one real agent process that
installs itself (``install-self``), updates itself to the second (probation, then exec:
same pid, the app is not restarted), refuses the broken third (remembered as failed) and
keeps updating its app. Static mode."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import fleetup
from tests.support.device import FLEETUP, new_repo, publish, write_config
from tests.support.http import serve_directory

CHECKOUT = Path(fleetup.__file__).resolve().parents[2]
CONSTRAINTS = CHECKOUT / "requirements" / "constraints.txt"
MAJOR, MINOR, MICRO = [*map(int, fleetup.__version__.split(".")[:3]), 0, 0][:3]
GOOD, BROKEN = f"{MAJOR}.{MINOR}.{MICRO + 1}", f"{MAJOR}.{MINOR}.{MICRO + 2}"
DEVICE_DEPENDENCIES = ["tuf>=7.0.1,<8", "securesystemslib[crypto]>=1.2", "httpx>=0.27,<1",
                       "zstandard>=0.23", "bsdiff4>=1.2", "click>=8.1", "rich>=13",
                       "packaging>=23", "hdiffpatch>=2.6"]

APP = b"""#!/bin/sh
echo $$ > "$FLEETUP_DATA/app.pid"
cat VERSION > "$FLEETUP_DATA/app.version"
exec sleep 3600
"""


def _wait(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _fleetup_wheel(work: Path, version: str, *, broken: bool = False) -> Path:
    """A wheel of this checkout with ``_version.py`` bumped (and, if ``broken``, an
    ``import fleetup`` that raises), built as a publisher would: ``pip wheel``."""
    src = work / f"checkout-{version}"
    shutil.copytree(CHECKOUT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, src / name)
    (src / "src/fleetup/_version.py").write_text(f'__version__ = "{version}"\n')
    if broken:
        init = src / "src/fleetup/__init__.py"
        init.write_text(init.read_text() + '\nraise RuntimeError("a broken fleetup")\n')
    out = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=600)
    return next(out.glob(f"fleetup-{version}-*.whl"))


@pytest.fixture(scope="module")
def dependency_wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The real wheels of fleetup's device dependencies (pip's cache keeps reruns fast)."""
    dest = tmp_path_factory.mktemp("dependency-wheels")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "-d", str(dest), "-c", str(CONSTRAINTS), *DEVICE_DEPENDENCIES],
                   check=True, capture_output=True, timeout=600)
    return sorted(dest.glob("*.whl"))


def _add_agent(repo: Path, version: str, wheels: list[Path]) -> dict[str, object]:
    args = [a for w in wheels for a in ("--wheel", str(w))]
    done = subprocess.run([*FLEETUP, "release", "add-agent", "--repo", str(repo), "--version",
                           version, "--type", "patch", "--no-index", *args, "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    body: dict[str, object] = json.loads(done.stdout)
    return body


@pytest.mark.slow
def test_agent_updates_itself_refuses_a_broken_one_and_keeps_the_app(
        tmp_path: Path, dependency_wheels: list[Path]) -> None:
    repo = new_repo(tmp_path / "repo")
    publish(repo, tmp_path, "1.0.0", extra={"bin/app": APP})
    agent_root = tmp_path / "fleetup-agent"
    data = tmp_path / "device" / "data"
    env = {**os.environ, "FLEETUP_PYTHON": sys.executable}
    with serve_directory(repo / "public", tmp_path) as server:
        config = write_config(
            tmp_path / "agent.toml", tmp_path / "device", server.url,
            repo / "public/metadata/1.root.json", extra=f"""
[process]
command = ["./bin/app"]
stop_timeout = 5

[self_update]
root = "{agent_root}"
timeout = 60
""")
        config.write_text(config.read_text().replace(
            'platform = "linux-x86_64"', 'platform = "linux-x86_64"\npoll_interval = 1.0\n'
            'poll_jitter = 0.0'))
        installed = subprocess.run([*FLEETUP, "agent", "-c", str(config), "install-self"],
                                   capture_output=True, text=True, timeout=300, check=False)
        assert installed.returncode == 0, installed.stderr
        argv = installed.stdout.split()
        assert argv == [str(agent_root / "current/bin/fleetup"), "agent", "-c",
                        str(config.resolve()), "run"]
        assert os.readlink(agent_root / "current") == f"releases/{fleetup.__version__}"

        daemon = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            _wait(lambda: _read(data / "app.version").strip() == "1.0.0"
                  and _read(data / "app.pid").strip() != "", "app 1.0.0")
            app_pid = int(_read(data / "app.pid"))

            good = _fleetup_wheel(tmp_path, GOOD)
            broken = _fleetup_wheel(tmp_path, BROKEN, broken=True)
            _add_agent(repo, GOOD, [good, *dependency_wheels])
            began = time.monotonic()
            _wait(lambda: os.readlink(agent_root / "current") == f"releases/{GOOD}",
                  f"the agent to switch to {GOOD}")
            _wait(lambda: f"{agent_root}/releases/{GOOD}" in _environ(daemon.pid),
                  f"the daemon to run {GOOD}")
            took = time.monotonic() - began
            assert daemon.poll() is None, "the handover must keep the same process"
            assert int(_read(data / "app.pid")) == app_pid, "the app was restarted"
            assert _alive(app_pid), "an agent update must not stop the app"

            added = _add_agent(repo, BROKEN, [broken, *dependency_wheels])
            failed = agent_root / ".fleetup" / "failed.json"
            _wait(lambda: BROKEN in _read(failed)
                  and not (agent_root / f"releases/{BROKEN}").exists()
                  and "idle" in _read(agent_root / ".fleetup/journal.json"),
                  "the broken agent to be refused and removed")
            assert "on probation" in json.loads(_read(failed))[BROKEN]
            assert os.readlink(agent_root / "current") == f"releases/{GOOD}"
            assert daemon.poll() is None
            assert _alive(app_pid)

            publish(repo, tmp_path, "1.1.0", extra={"bin/app": APP})
            _wait(lambda: _read(data / "app.version").strip() == "1.1.0",
                  "app 1.1.0 under the new agent")
            daemon.send_signal(signal.SIGTERM)
            output, _ = daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.communicate()
    assert daemon.returncode == 0, output
    assert "Traceback" not in output.replace("RuntimeError: a broken fleetup", "")
    deltas = added["deltas"]
    assert isinstance(deltas, dict)
    assert GOOD in deltas
    print(f"\nself-update to {GOOD} took {took:.1f}s (probation included); "
          f"agent delta {GOOD} -> {BROKEN}: {deltas[GOOD]} bytes, "
          f"full archive {added['archive_size']} bytes")


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode()
    except OSError:
        return ""


def test_launcher_runs_its_own_tree(tmp_path: Path) -> None:
    """The launcher resolves ``current`` once: the tree it runs is the version it started."""
    from fleetup._agent_tree import write_launcher

    tree = tmp_path / "releases" / "1.0"
    (tree / "lib" / "fleetup").mkdir(parents=True)
    (tree / "lib" / "fleetup" / "__main__.py").write_text(
        "import os, sys; print(os.environ['FLEETUP_TREE'], sys.argv[1:])\n")
    write_launcher(tree)
    (tmp_path / "current").symlink_to("releases/1.0")
    done = subprocess.run([str(tmp_path / "current/bin/fleetup"), "x"], capture_output=True,
                          text=True, env={**os.environ, "FLEETUP_PYTHON": sys.executable},
                          check=True)
    assert re.fullmatch(rf"{re.escape(str(tree.resolve()))} \['x'\]\n", done.stdout)
