"""The application as a child process: started in ``current/``, restarted when it dies.

``fleetup agent run`` supervises the app's command. After a switch the supervisor
restarts it from the new tree and counts its exits, so the health check can tell a
crash loop from a healthy start. Each app runs in its own process group, so stopping it
stops its children too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from fleetup.errors import HealthCheckError

__all__ = ["AppSupervisor", "CommandRestarter", "NoRestarter", "Restarter", "restarts_app"]

log = logging.getLogger("fleetup.agent")


class Restarter(Protocol):
    """Makes the app run the version ``current`` points to now."""

    def restart(self) -> None:
        """Raises HealthCheckError if the app could not be (re)started."""
        ...

    def exits_since(self, moment: float) -> list[int]:
        """Exit codes of the app since ``moment`` (monotonic); empty if not supervised."""
        ...


class NoRestarter:
    """No app is configured: nothing to restart, nothing to watch."""

    def restart(self) -> None:
        return None

    def exits_since(self, moment: float) -> list[int]:
        return []


def restarts_app(restarter: Restarter) -> bool:
    """Whether ``restarter`` (re)starts an app at a switch, one that could then crash.

    Only :class:`NoRestarter` does not: with it the health check has no start-up to
    wait for.
    """
    return not isinstance(restarter, NoRestarter)


class CommandRestarter:
    """Runs a configured command (e.g. ``systemctl restart hello``)."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: Callable[[], Mapping[str, str]],
                 timeout: float = 60.0) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.timeout = timeout

    def restart(self) -> None:
        try:
            result = subprocess.run(self.argv, cwd=self.cwd, env=dict(self.env()),
                                    timeout=self.timeout,
                                    capture_output=True, text=True, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise HealthCheckError(f"restart command failed: {e}") from e
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or [""])[-1]
            raise HealthCheckError(
                f"restart command exited {result.returncode}" + (f": {tail}" if tail else ""))

    def exits_since(self, moment: float) -> list[int]:
        return []


class AppSupervisor:
    """Keeps one app process running from ``cwd`` (the ``current`` symlink).

    ``poll()`` must be called periodically; it restarts an app that exited, with a
    growing delay while it keeps exiting.
    """

    def __init__(self, command: Sequence[str], cwd: Path, env: Callable[[], Mapping[str, str]], *,
                 stop_timeout: float = 10.0, log_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.env = env  # called at each start: FLEETUP_VERSION follows the switch
        self.stop_timeout = stop_timeout
        self.log_file = log_file
        self.clock = clock
        self.process: subprocess.Popen[bytes] | None = None
        self.exits: list[tuple[float, int]] = []
        self._next_start = 0.0
        self._backoff = 0.5
        self._log: IO[bytes] | None = None
        # The daemon's loop polls while an update cycle (another thread) restarts.
        self._lock = threading.RLock()

    @property
    def running(self) -> bool:
        with self._lock:
            return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the app if ``current`` exists. Raises HealthCheckError if it cannot."""
        with self._lock:
            if self.running or not self.cwd.exists():
                return
            if self.log_file is not None and self._log is None:
                self._log = self.log_file.open("ab")
            try:
                self.process = subprocess.Popen(
                    self.command, cwd=self.cwd.resolve(), env=dict(self.env()),
                    start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
            except OSError as e:
                self.process = None
                raise HealthCheckError(f"cannot start the app ({self.command[0]}): "
                                       f"{e.strerror}") from e
            log.info("app started (pid %d) from %s", self.process.pid, self.cwd.resolve().name)

    def stop(self) -> None:
        """SIGTERM the app's process group, then SIGKILL after ``stop_timeout``."""
        with self._lock:
            process, self.process = self.process, None
            if process is None or process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.info("app stopped")

    def restart(self) -> None:
        with self._lock:
            self.stop()
            self._backoff = 0.5
            self._next_start = 0.0
            self.start()

    def poll(self) -> None:
        """Record an exit and restart the app once its back-off delay has passed."""
        with self._lock:
            now = self.clock()
            if self.process is not None:
                code = self.process.poll()
                if code is None:
                    return
                self.exits.append((now, code))
                self.exits = self.exits[-50:]
                log.warning("app exited with %d; restarting in %.1fs", code, self._backoff)
                self.process = None
                self._next_start = now + self._backoff
                self._backoff = min(self._backoff * 2, 30.0)
            if now >= self._next_start:
                self.start()

    def exits_since(self, moment: float) -> list[int]:
        with self._lock:
            self.poll()
            return [code for at, code in self.exits if at >= moment]

    def close(self) -> None:
        with self._lock:
            self.stop()
            if self._log is not None:
                self._log.close()
                self._log = None
