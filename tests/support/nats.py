"""A throwaway NATS server for tests: Debian's ``nats-server`` on a free loopback port.

``nats_server`` (function scope: a test may stop it) yields a running
:class:`NatsServer`. Without the binary the tests skip — unless ``FLEETUP_CI=1``, where
it is a failure: CI must run them (``scripts/sysdeps.sh`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fleet import free_port

__all__ = ["NatsServer", "nats_server"]


@dataclass
class NatsServer:
    binary: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.process.returncode}: "
                                   f"{self.log.read_text() if self.log.exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if binary is None:
        message = "nats-server not found: apt-get install nats-server"
        if os.environ.get("FLEETUP_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    server = NatsServer(binary, free_port(), tmp_path / "nats.log").start()
    try:
        yield server
    finally:
        server.stop()
