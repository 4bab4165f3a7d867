"""``fleetup agent run`` as a real process: it supervises the app, updates it, reloads
modules after the switch, answers the local status API, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.device import FLEETUP, new_repo, publish, write_config
from tests.support.http import serve_directory

APP = b"""#!/bin/sh
# The app records which version it is, then runs until stopped.
cat VERSION > "$FLEETUP_DATA/app.version"
echo "$FLEETUP_VERSION" > "$FLEETUP_DATA/app.env-version"
echo $$ > "$FLEETUP_DATA/app.pid"
exec sleep 3600
"""

RECORDER = b"""import os
from pathlib import Path

LOG = Path(os.environ["FLEETUP_DATA"]) / "modules.log"
VERSION = (Path(__file__).parent.parent / "VERSION").read_text().strip()

def _note(what):
    with LOG.open("a") as f:
        f.write(f"{what} {VERSION}\\n")

def init():
    _note("init")

def run():
    _note("run")

def tick():
    _note("tick")

def cleanup():
    _note("cleanup")
"""

BROKEN = b"""def init():
    raise RuntimeError("this module is broken")

def tick():
    raise AssertionError("never ticked: disabled after init failed")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_daemon_supervises_updates_reloads_modules_and_stops(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    extra = {"bin/app": APP, "modules/recorder.py": RECORDER, "modules/broken.py": BROKEN}
    publish(repo, tmp_path, "1.0.0", extra=extra)
    port = _free_port()
    with serve_directory(repo / "public", tmp_path) as server:
        config = write_config(
            tmp_path / "agent.toml", tmp_path / "device", server.url,
            repo / "public/metadata" / "1.root.json",
            extra=f"""
[process]
command = ["./bin/app"]
stop_timeout = 5

[modules]
tick_interval = 0.2

[status_api]
enabled = true
port = {port}
""")
        config.write_text(config.read_text().replace('platform = "linux-x86_64"',
                                                     'platform = "linux-x86_64"\n'
                                                     'poll_interval = 1.0\npoll_jitter = 0.0'))
        data = tmp_path / "device" / "data"
        daemon = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "run"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait(lambda: _read(data / "app.version").strip() == "1.0.0", what="app 1.0.0")
            _wait(lambda: "tick 1.0.0" in _read(data / "modules.log"), what="a tick")
            first_pid = int(_read(data / "app.pid"))

            publish(repo, tmp_path, "1.1.0", extra=extra)
            _wait(lambda: _read(data / "app.version").strip() == "1.1.0", what="app 1.1.0")
            _wait(lambda: "tick 1.1.0" in _read(data / "modules.log"), what="new modules")
            assert _read(data / "app.env-version").strip() == "1.1.0"
            assert not _alive(first_pid), "the old app is still running"
            log = _read(data / "modules.log").splitlines()
            assert log.index("cleanup 1.0.0") < log.index("init 1.1.0")
            assert log.count("init 1.0.0") == 1
            assert log.count("run 1.0.0") == 1

            api = f"http://127.0.0.1:{port}/api/updates"
            status = httpx.get(f"{api}/status", timeout=10).json()
            assert status["version"] == "1.1.0"
            assert status["state"] == "idle"
            backups = httpx.get(f"{api}/backups", timeout=10).json()
            assert [b["version"] for b in backups] == ["1.0.0", "1.1.0"]
            assert httpx.get(f"{api}/nope", timeout=10).status_code == 404
            # A change needs the local token (a file only the agent's user can read).
            token = (tmp_path / "device" / ".fleetup" / "status-api.token").read_text().strip()
            rolled = httpx.post(f"{api}/rollback", json={"to": "1.0.0"}, timeout=10,
                                headers={"Authorization": f"Bearer {token}"})
            assert rolled.status_code == 202
            _wait(lambda: _read(data / "app.version").strip() == "1.0.0", what="rollback")
            history = httpx.get(f"{api}/history", timeout=10).json()
            assert history[-1]["kind"] == "rollback"

            app_pid = int(_read(data / "app.pid"))
            daemon.send_signal(signal.SIGTERM)
            output, _ = daemon.communicate(timeout=30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        assert daemon.returncode == 0, output
        assert _read(data / "modules.log").splitlines()[-1] == "cleanup 1.0.0"
        assert not _alive(app_pid), "the app outlived the agent"
        assert "module broken disabled" in output
        assert "Traceback" not in output
