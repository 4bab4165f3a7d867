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
