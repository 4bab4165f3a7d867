"""The main job, as CI runs it: `fleetup demo --devices 5` must tell the whole story and
verify it from the server's state and the devices' disks (exit 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_demo_tells_the_whole_story(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fleetup", "demo", "--devices", "5",
                             "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "every device on 1.0.0" in output
    assert "every device on 1.1.0 and the rollout completed" in output
    assert "failed its health check and rolled back by itself" in output
    assert "paused" in output
    assert "verified from the server's state and every device's disk" in output
    # The demo's verdict is its own; check one fact on disk independently of it.
    devices = sorted((tmp_path / "demo" / "devices").iterdir())
    currents = {d.name: (d / "current").resolve().name for d in devices if d.is_dir()}
    assert set(currents.values()) == {"1.1.0"}
    assert len(currents) == 5


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or working directory mentions ``text`` (a
    supervised app runs as ./bin/app from inside a device's tree)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = str((proc / "cwd").readlink())
        except OSError:
            continue
        if text in cmdline or cwd.startswith(text):
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_serve_keeps_the_fleet_up_until_ctrl_c_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    workdir = tmp_path / "serve"
    demo = subprocess.Popen([sys.executable, "-m", "fleetup", "demo", "--devices", "3",
                             "--serve", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert demo.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "press Ctrl-C" in line:
            break
    text = "".join(lines)
    assert "press Ctrl-C" in text, text[-3000:]
    url = next(line.split()[-1] for line in lines if line.startswith("dashboard:"))
    token = next(line.split()[-1] for line in lines if line.startswith("viewer token:"))
    # Still serving: the server answers with the viewer token, agents still run.
    devices = httpx.get(url + "api/v1/devices", timeout=10,
                        headers={"Authorization": f"Bearer {token}"}).json()
    assert devices["count"] == 3
    running = _processes_mentioning(str(workdir))
    assert len(running) >= 1 + 3 + 3, running  # the server, 3 agents and their 3 apps
    demo.send_signal(signal.SIGINT)
    demo.communicate(timeout=120)
    assert demo.returncode == 0
    time.sleep(0.5)
    assert _processes_mentioning(str(workdir)) == [], "processes left behind"
