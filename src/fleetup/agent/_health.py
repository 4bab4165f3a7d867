"""Is the switched-to release healthy? Its health check, within its timeout.

The plan merges the release's signed health spec with the device's ``[health]``
config (local checks add to the publisher's, the local timeout wins). A check passes
when every configured part passes: the app has not crash-looped during the start-up
grace period, the command exited 0 (run in ``current/``), and the URL answered 2xx.

The start-up grace is only for an app that was restarted by the switch (supervised by
``agent run``, or by a restart command): it gives that app time to crash, or to come
up, before it is judged. Where nothing was restarted there is nothing to wait for, so a
one-shot ``update`` without an app waits no grace at all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from fleetup._facts import HealthSpec
from fleetup.agent._config import HealthConfig
from fleetup.agent._supervisor import Restarter

__all__ = ["HealthPlan", "plan_health", "run_health_check", "run_pre_check"]


@dataclass(frozen=True, slots=True)
class HealthPlan:
    commands: tuple[tuple[str, ...], ...]
    urls: tuple[str, ...]
    timeout: float
    startup_grace: float
    crash_loop_restarts: int


def plan_health(signed: HealthSpec | None, local: HealthConfig, *,
                app_restarted: bool = True) -> HealthPlan:
    """The checks to run for a release: the publisher's plus the device's own.

    ``app_restarted`` is false when the switch restarted no app: no start-up grace then.
    """
    commands = tuple(c for c in ((signed.command if signed else ()), local.command) if c)
    urls = tuple(u for u in ((signed.url if signed else None), local.url) if u)
    timeout = local.timeout or (signed.timeout if signed else 30.0)
    grace = local.startup_grace if app_restarted else 0.0
    return HealthPlan(commands, urls, timeout, grace, local.crash_loop_restarts)


def run_health_check(plan: HealthPlan, *, cwd: Path, env: Mapping[str, str],
                     app: Restarter, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Run the plan; ``None`` if healthy, else one line saying why not."""
    started = clock()
    deadline = started + plan.timeout
    reason = _watch_start(plan, app, started, clock, sleep)
    for command in plan.commands:
        reason = reason or _run_command(command, cwd, env, deadline - clock())
    for url in plan.urls:
        reason = reason or _poll_url(url, deadline, clock, sleep)
    return reason or _crash_loop(plan, app, started)


def run_pre_check(command: tuple[str, ...], *, cwd: Path, env: Mapping[str, str],
                  timeout: float) -> str | None:
    """The device's ``[health] pre_command``, run before a switch: ``None`` if the update
    may go ahead, else one line saying why not ("pre-check exited 1: on battery").

    It judges the moment, not the release: a "no" holds the update back for now and
    blames nothing. An empty command always says yes.
    """
    if not command:
        return None
    return _run_command(command, cwd, env, timeout, what="pre-check")


def _watch_start(plan: HealthPlan, app: Restarter, started: float,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> str | None:
    while clock() - started < plan.startup_grace:
        reason = _crash_loop(plan, app, started)
        if reason:
            return reason
        sleep(min(0.1, plan.startup_grace))
    return None


def _crash_loop(plan: HealthPlan, app: Restarter, started: float) -> str | None:
    exits = app.exits_since(started)
    if len(exits) >= max(1, plan.crash_loop_restarts):
        return f"the app crash-looped: exited {len(exits)} times (last exit code {exits[-1]})"
    return None


def _run_command(command: tuple[str, ...], cwd: Path, env: Mapping[str, str],
                 budget: float, what: str = "health command") -> str | None:
    if budget <= 0:
        check = "health check" if what == "health command" else what
        return f"{check} timed out before its command ran"
    try:
        # Its own process group, so a timeout also stops whatever the command started;
        # output that is not UTF-8 must not crash the agent half way through a switch.
        process = subprocess.Popen(list(command), cwd=cwd, env=dict(env),
                                   start_new_session=True, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   encoding="utf-8", errors="replace")
    except OSError as e:
        return f"{what} {command[0]} could not run: {e.strerror}"
    with process:  # on the way out: close the pipes, reap the child
        try:
            stdout, stderr = process.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return f"{what} {command[0]} did not finish within {budget:.0f}s"
    if process.returncode != 0:
        tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or [""])[-1][:200]
        return f"{what} exited {process.returncode}" + (f": {tail}" if tail else "")
    return None


def _poll_url(url: str, deadline: float, clock: Callable[[], float],
              sleep: Callable[[float], None]) -> str | None:
    last = "no answer"
    with httpx.Client(timeout=5.0, follow_redirects=False) as client:
        while True:
            try:
                response = client.get(url)
                if 200 <= response.status_code < 300:
                    return None
                last = f"HTTP {response.status_code}"
            except httpx.InvalidURL:
                return f"health URL {url!r} is not a valid URL"
            except httpx.HTTPError as e:
                last = type(e).__name__
            if clock() >= deadline:
                return f"health URL {url} did not answer 2xx in time ({last})"
            sleep(0.25)
