"""``fleetup agent run``: poll, update, supervise the app, tick modules, stop cleanly.

The daemon holds the device lock for its whole life. Update cycles run in a worker
thread so the main loop keeps supervising the app and ticking modules during a long
download. ``[policy] apply`` other than "now" makes the poll's cycles stop once a release is
staged: "next-start" applies it when the daemon next starts, "manual" only on request
(``agent apply``, the status API). SIGTERM/SIGINT set the stop event: a cycle in a
state that is safe to leave (downloading, verified, staged) is abandoned — it resumes
on the next start — while a cycle past the switch is allowed to finish (commit or roll
back) first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from fleetup.agent._agent import Agent, Outcome, Result
from fleetup.agent._lifecycle import FINISH_BEFORE_STOP

if TYPE_CHECKING:
    from fleetup.agent._modules import ModuleHost
    from fleetup.agent._push import PushListener
    from fleetup.agent._self_update import SelfUpdater
from fleetup.agent._supervisor import AppSupervisor
from fleetup.errors import FleetupError

__all__ = ["Daemon", "Request"]

log = logging.getLogger("fleetup.agent")


@dataclass
class Request:
    """Work asked of the daemon from outside the poll schedule (the status API)."""

    kind: str  # "check" | "update" | "rollback" | "apply" | "health"
    version: str | None = None
    download_only: bool = False  # an update that stops once staged (the poll's, by policy)
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class Daemon:
    """Runs one agent until asked to stop."""

    def __init__(self, agent: Agent, *, supervisor: AppSupervisor | None = None,
                 modules: ModuleHost | None = None, push: PushListener | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.supervisor = supervisor
        self.modules = modules
        self.push = push
        self._wake_at: float | None = None  # a pushed "check now", due at this time
        self._wake_lock = threading.Lock()
        self.clock = clock
        self.requests: queue.Queue[Request] = queue.Queue()
        self.stop = agent.stop
        self._worker: threading.Thread | None = None
        self._installed: str | None = None
        self.last_outcome: Outcome | None = None
        self.last_error: str | None = None
        # fleetup updating itself (``[self_update]``): set by build_daemon; ``handover``
        # is the new agent's argv once one was committed (exec'd after the loop ends).
        self.self_update: SelfUpdater | None = None
        self.handover: list[str] | None = None

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """The main loop. Returns the exit code (0 on a clean stop).

        Raises:
            StateError: another agent holds the lock.
        """
        config = self.agent.config
        with self.agent.store.lock():
            self._installed = self.agent.store.installed_version()
            self._apply_at_start()
            if self.supervisor is not None:
                self._start_app()
            if self.modules is not None and config.modules.enabled:
                self.modules.load()
            if self.push is not None:
                self.push.start()
            next_poll = self.clock()
            next_tick = self.clock() + config.modules.tick_interval
            every = config.health.interval
            next_health = self.clock() + every if every > 0 else float("inf")
            while not self.stop.is_set():
                now = self.clock()
                if not self._busy():
                    if not self.requests.empty():
                        self._start(self.requests.get())
                    elif self._woken(now) or now >= next_poll:
                        self._start(Request("update", download_only=self._stages_only()))
                        next_poll = now + self._interval()
                    elif now >= next_health:  # after any update: report what runs
                        self._start(Request("health"))
                        next_health = now + every
                if self.supervisor is not None:
                    self._poll_app()
                if self.modules is not None and now >= next_tick and not self._busy():
                    self.modules.deliver_flags(self.agent.store.load_flags())
                    self.modules.tick()
                    next_tick = now + config.modules.tick_interval
                self.stop.wait(0.2)
            if self.handover:
                from fleetup.agent._self_update import detach_app

                detach_app(self.supervisor)
            self._shutdown()
        return 0

    def _stages_only(self) -> bool:
        return self.agent.config.policy.apply != "now"

    def _apply_at_start(self) -> None:
        """``apply = "next-start"``: what an earlier run staged is applied first."""
        if self.agent.config.policy.apply == "next-start" \
                and self.agent.staged_version() is not None:
            log.info("applying the staged %s on start", self.agent.staged_version())
            self.submit("apply")

    def check_in_within(self, seconds: float) -> None:
        """Check (and update) within ``seconds`` rather than at the next poll; callable
        from any thread (the push listener's). A cycle under way finishes first."""
        at = self.clock() + seconds
        with self._wake_lock:
            if self._wake_at is None or at < self._wake_at:
                self._wake_at = at

    def _woken(self, now: float) -> bool:
        with self._wake_lock:
            if self._wake_at is None or now < self._wake_at:
                return False
            self._wake_at = None
            return True

    def _interval(self) -> float:
        config = self.agent.config
        base = self.agent.director.next_check(config.poll_interval)
        jitter = base * config.poll_jitter
        return max(1.0, base + random.uniform(-jitter, jitter))

    def _busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _start(self, request: Request) -> None:
        self._worker = threading.Thread(target=self._work, args=(request,),
                                        name="fleetup-cycle", daemon=True)
        self._worker.start()

    def _work(self, request: Request) -> None:
        try:
            if request.kind == "check":
                value: Any = self.agent.check(request.version)
            elif request.kind == "health":
                value = self.agent.report_health()
            elif request.kind == "rollback":
                value = self.agent.rollback(request.version)
            elif request.kind == "apply":
                value = self.agent.apply()
            else:
                value = self.agent.update(request.version, download_only=request.download_only)
            if isinstance(value, Outcome):
                self.last_outcome = value
                self._after(value)
            if request.kind == "update" and self.self_update is not None:
                self.handover = self.self_update.cycle()
                if self.handover:
                    self.stop.set()
            _release_free_memory()
            self.last_error = None
            request.result.set_result(value)
        except FleetupError as e:
            self.last_error = str(e)
            log.error("%s failed: %s", request.kind, e)
            request.result.set_exception(e)
        except Exception as e:
            log.exception("%s crashed", request.kind)
            self.last_error = f"{type(e).__name__}: {e}"
            request.result.set_exception(e)

    def _after(self, outcome: Outcome) -> None:
        installed = self.agent.store.installed_version()
        if outcome.result is Result.FAILED:
            log.error("update to %s failed: %s", outcome.target, outcome.reason)
        if installed != self._installed:
            self._installed = installed
            if self.modules is not None and self.agent.config.modules.enabled:
                self.modules.load()

    def _start_app(self) -> None:
        assert self.supervisor is not None
        try:
            self.supervisor.start()
        except FleetupError as e:
            log.error("%s", e)

    def _poll_app(self) -> None:
        assert self.supervisor is not None
        try:
            self.supervisor.poll()
        except FleetupError as e:
            log.error("%s", e)

    def _shutdown(self) -> None:
        if self.push is not None:
            self.push.stop()
        worker = self._worker
        if worker is not None and worker.is_alive():
            state = self.agent.store.load_journal().state
            if state in FINISH_BEFORE_STOP:
                log.info("waiting for the %s step to finish before stopping", state)
                worker.join()
            else:
                worker.join(timeout=5.0)
        if self.modules is not None:
            self.modules.unload()
        if self.supervisor is not None:
            self.supervisor.close()
        log.info("agent stopped")

    def submit(self, kind: str, version: str | None = None) -> Request:
        """Ask the daemon to check, update or roll back as soon as it is free."""
        request = Request(kind, version)
        self.requests.put(request)
        return request


def _release_free_memory() -> None:
    """Give memory freed by a cycle (parsed metadata, buffers) back to the system.

    A daemon idles most of its life; glibc keeps freed heap pages mapped unless asked.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
