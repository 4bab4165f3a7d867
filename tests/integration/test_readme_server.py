"""The README's fleet-server section works pasted into a shell, in order, on a fresh
directory (issue 16 §7): each line run by bash, the real `fleetup` commands, a real
server on loopback. Only the port is changed, and `sleep` becomes a wait for the port."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def server_block() -> str:
    """The first ``sh`` block of the README's "Run a fleet server" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Run a fleet server"):]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_server_section_runs_in_order(tmp_path: Path) -> None:
    port = free_port()
    # Bounded: a server that never listens fails the script instead of hanging it.
    wait = (f"{sys.executable} -c 'import socket,time\nfor _ in range(600):\n try: "
            f"socket.create_connection((\"127.0.0.1\",{port}),1).close(); break\n"
            " except OSError: time.sleep(0.1)\nelse: raise SystemExit(\"no server\")'")
    block = server_block().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    block = block.replace("fleetup server --data DATA &", f"fleetup server --data DATA "
                          f"--port {port} &")
    block = re.sub(r"^sleep \d+.*$", wait, block, flags=re.M)
    assert f"--port {port} &" in block
    assert "sleep 3" not in block
    # `fleetup` on PATH execs Python, so the background job's pid is the server's own.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fleetup").write_text(f"#!/bin/sh\nexec {sys.executable} -m fleetup \"$@\"\n")
    (bin_dir / "fleetup").chmod(0o755)
    script = (f"set -e\nexport PATH={bin_dir}:$PATH\n"
              "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + block)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "VERSION").write_text("1.0.0\n")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already on the server" in done.stderr  # --from REPO came after release add
    assert "1.0.0" in done.stdout  # release list --server
