"""Serve a directory over real HTTP on 127.0.0.1 from a separate process."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


class StaticServer:
    """A running static host. ``url`` ends with a slash; the port survives restarts."""

    def __init__(self, directory: Path, workdir: Path, rate: int | None = None,
                 access_log: Path | None = None) -> None:
        if (directory / "keys").exists():
            # What devices read is REPO/public; serving REPO would serve its keys.
            raise ValueError(f"{directory} holds keys/: serve its public/ folder instead")
        self.directory = directory
        self.rate = rate
        self.access_log = access_log
        self.port_file = workdir / f"static-{id(self)}.port"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> StaticServer:
        if self.port:
            self.port_file.write_text(str(self.port))
        else:
            self.port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "tests.support.static_server", str(self.directory),
               str(self.port_file)]
        if self.rate:
            cmd += ["--rate", str(self.rate)]
        if self.access_log:
            cmd += ["--log", str(self.access_log)]
        self.process = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("static server exited on start")
            if self.port_file.exists() and self.port_file.read_text().strip():
                candidate = int(self.port_file.read_text())
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(f"http://127.0.0.1:{candidate}/", timeout=1)
                    self.port = candidate
                    return self
            time.sleep(0.05)
        raise RuntimeError("static server did not start")

    def requests(self) -> list[dict[str, object]]:
        """The access log so far (needs ``access_log``)."""
        if self.access_log is None or not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def kill(self) -> None:
        """SIGKILL: the connection drops mid-response, like a dead host."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def serve_directory(directory: Path, workdir: Path, rate: int | None = None,
                    access_log: Path | None = None) -> Iterator[StaticServer]:
    server = StaticServer(directory, workdir, rate, access_log).start()
    try:
        yield server
    finally:
        server.stop()
