"""The health check: plan merging, a command in ``current/``, a URL, and crash loops.

Time is faked (``clock``/``sleep`` seams) wherever the check waits; the one real wait
is the command timeout, which is a real process being killed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleetup._facts import HealthSpec
from fleetup.agent._config import HealthConfig
from fleetup.agent._health import HealthPlan, plan_health, run_health_check
from fleetup.agent._supervisor import NoRestarter
from tests.support.clock import FakeClock
from tests.support.trees import File, make_tree

ENV = dict(os.environ)




@dataclass
class ExitingApp:
    """A Restarter whose app exits: ``codes_after[n]`` are its exits once the health
    check has looked ``n`` times (so a crash loop can start during the grace period)."""

    codes: list[int] = field(default_factory=list)
    appear_after: int = 0
    looks: int = 0
    moments: list[float] = field(default_factory=list)

    def restart(self) -> None:
        return None

    def exits_since(self, moment: float) -> list[int]:
        self.looks += 1
        self.moments.append(moment)
        return list(self.codes) if self.looks > self.appear_after else []


def plan(*commands: tuple[str, ...], urls: tuple[str, ...] = (), timeout: float = 10.0,
         grace: float = 0.0, restarts: int = 3) -> HealthPlan:
    return HealthPlan(tuple(commands), urls, timeout, grace, restarts)


@pytest.fixture
def current(tmp_path: Path) -> Path:
    """``current -> releases/1.0`` with a few health scripts."""
    make_tree(tmp_path / "releases" / "1.0", {
        "marker": "in the release",
        "ok.sh": File("#!/bin/sh\ntest -f marker\n", 0o755),
        "fail.sh": File("#!/bin/sh\necho progress\necho 'database unreachable' >&2\nexit 4\n",
                        0o755),
        "quiet.sh": File("#!/bin/sh\necho 'only on stdout'\nexit 2\n", 0o755),
        "binary.sh": File("#!/bin/sh\nprintf '\\377\\376 bad bytes\\n' >&2\nexit 1\n", 0o755),
        "long.sh": File("#!/bin/sh\nprintf 'x%.0s' $(seq 1 500) >&2\nexit 1\n", 0o755),
        "hang.sh": File("#!/bin/sh\nsleep 30 &\necho $! > \"$PIDFILE\"\nwait\n", 0o755),
        "env.sh": File("#!/bin/sh\ntest \"$CHECK_ME\" = yes\n", 0o755),
    })
    link = tmp_path / "current"
    os.symlink("releases/1.0", link)
    return link


def check(the_plan: HealthPlan, current: Path, app: object = None,
          env: dict[str, str] | None = None, clock: FakeClock | None = None) -> str | None:
    clock = clock or FakeClock(1000.0)
    return run_health_check(the_plan, cwd=current, env=env or ENV,
                            app=app or NoRestarter(),  # type: ignore[arg-type]
                            clock=clock, sleep=clock.sleep)


# -- the plan ------------------------------------------------------------------------------


def test_plan_merges_the_signed_check_with_the_local_one() -> None:
    signed = HealthSpec(("./health.sh",), "http://127.0.0.1:1/health", 20.0)
    local = HealthConfig(command=("./local-check",), url="http://127.0.0.1:2/ok",
                         startup_grace=1.5, crash_loop_restarts=4)
    the_plan = plan_health(signed, local)
    assert the_plan.commands == (("./health.sh",), ("./local-check",))
    assert the_plan.urls == ("http://127.0.0.1:1/health", "http://127.0.0.1:2/ok")
    assert the_plan.timeout == 20.0
    assert (the_plan.startup_grace, the_plan.crash_loop_restarts) == (1.5, 4)


def test_the_local_timeout_wins_and_no_signed_check_is_fine() -> None:
    assert plan_health(HealthSpec(("./h",), None, 20.0), HealthConfig(timeout=5.0)).timeout == 5.0
    empty = plan_health(None, HealthConfig())
    assert (empty.commands, empty.urls, empty.timeout) == ((), (), 30.0)


def test_no_start_up_grace_when_the_switch_restarted_no_app() -> None:
    local = HealthConfig(startup_grace=2.0)
    assert plan_health(None, local).startup_grace == 2.0
    assert plan_health(None, local, app_restarted=False).startup_grace == 0.0


def test_an_empty_plan_passes(current: Path) -> None:
    assert check(plan(), current) is None


# -- commands ------------------------------------------------------------------------------


def test_a_command_runs_in_current(current: Path) -> None:
    assert check(plan(("./ok.sh",)), current) is None


def test_a_failing_command_reports_its_exit_code_and_stderr_tail(current: Path) -> None:
    assert check(plan(("./fail.sh",)), current) == (
        "health command exited 4: database unreachable")


def test_without_stderr_the_stdout_tail_is_the_reason(current: Path) -> None:
    assert check(plan(("./quiet.sh",)), current) == "health command exited 2: only on stdout"


def test_the_tail_is_one_short_line(current: Path) -> None:
    reason = check(plan(("./long.sh",)), current)
    assert reason is not None
    assert reason.startswith("health command exited 1: xxxx")
    assert len(reason) <= len("health command exited 1: ") + 200


def test_output_that_is_not_utf8_is_still_a_reason_not_a_crash(current: Path) -> None:
    reason = check(plan(("./binary.sh",)), current)
    assert reason is not None
    assert reason.startswith("health command exited 1:")
    assert "bad bytes" in reason


def test_the_command_gets_the_environment(current: Path) -> None:
    assert check(plan(("./env.sh",)), current, env={**ENV, "CHECK_ME": "yes"}) is None
    assert check(plan(("./env.sh",)), current, env={**ENV, "CHECK_ME": "no"}) == (
        "health command exited 1")


def test_every_command_must_pass(current: Path) -> None:
    reason = check(plan(("./ok.sh",), ("./fail.sh",)), current)
    assert reason is not None
    assert "exited 4" in reason


def test_a_command_that_cannot_run(current: Path) -> None:
    reason = check(plan(("./no-such-check",)), current)
    assert reason is not None
    assert reason.startswith("health command ./no-such-check could not run")


def test_a_command_past_the_timeout_is_killed_with_what_it_started(current: Path,
                                                                    tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    reason = check(plan(("./hang.sh",), timeout=1.0), current,
                   env={**ENV, "PIDFILE": str(pidfile)}, clock=None)
    assert reason == "health command ./hang.sh did not finish within 1s"
    assert time.monotonic() - started < 25  # not left waiting for the 30 s sleep
    child = int(pidfile.read_text())
    assert _gone(child)


def test_no_budget_left_means_no_command(current: Path) -> None:
    clock = FakeClock(1000.0)
    app = ExitingApp()
    # The start-up grace used the whole budget.
    reason = run_health_check(plan(("./ok.sh",), timeout=1.0, grace=1.0), cwd=current,
                              env=ENV, app=app, clock=clock, sleep=clock.sleep)
    assert reason == "health check timed out before its command ran"


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    for _ in range(200):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


# -- URLs ----------------------------------------------------------------------------------


@dataclass
class Answers:
    statuses: list[int]
    seen: list[str] = field(default_factory=list)


@pytest.fixture
def http() -> Iterator[tuple[str, Answers]]:
    """A real loopback HTTP server answering the next status in ``answers.statuses``
    (the last one repeats)."""
    answers = Answers([200])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answers.seen.append(self.path)
            status = answers.statuses.pop(0) if len(answers.statuses) > 1 \
                else answers.statuses[0]
            body = b"ok" if status == 200 else b"not yet"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_that_answers_500_then_200_passes(http: tuple[str, Answers],
                                                current: Path) -> None:
    base, answers = http
    answers.statuses = [500, 500, 200]
    clock = FakeClock(1000.0)
    assert check(plan(urls=(f"{base}/health",)), current, clock=clock) is None
    assert answers.seen == ["/health"] * 3
    assert len(clock.sleeps) == 2


def test_a_url_that_never_answers_2xx_fails_at_the_deadline(http: tuple[str, Answers],
                                                            current: Path) -> None:
    base, answers = http
    answers.statuses = [503]
    clock = FakeClock(1000.0)
    reason = check(plan(urls=(f"{base}/health",), timeout=5.0), current, clock=clock)
    assert reason == f"health URL {base}/health did not answer 2xx in time (HTTP 503)"
    assert clock.now >= 1005.0
    assert len(answers.seen) == len(clock.sleeps) + 1


def test_a_url_nobody_listens_on(current: Path) -> None:
    reason = check(plan(urls=("http://127.0.0.1:9/health",), timeout=1.0), current)
    assert reason == "health URL http://127.0.0.1:9/health did not answer 2xx in time " \
        "(ConnectError)"


def test_a_redirect_is_not_healthy(http: tuple[str, Answers], current: Path) -> None:
    base, answers = http
    answers.statuses = [302]
    reason = check(plan(urls=(f"{base}/",), timeout=1.0), current)
    assert reason is not None
    assert "HTTP 302" in reason


# -- crash loops ---------------------------------------------------------------------------


def test_a_crash_loop_during_the_start_up_grace_fails_early(current: Path) -> None:
    app = ExitingApp(codes=[1, 1, 139], appear_after=3)
    clock = FakeClock(1000.0)
    reason = check(plan(("./ok.sh",), grace=2.0, restarts=3), current, app=app, clock=clock)
    assert reason == "the app crash-looped: exited 3 times (last exit code 139)"
    assert app.looks == 4
    assert clock.now < 1002.0  # it did not wait out the grace period
    assert set(app.moments) == {1000.0}  # exits counted since the check started


def test_fewer_exits_than_the_limit_is_healthy(current: Path) -> None:
    app = ExitingApp(codes=[1, 1])
    clock = FakeClock(1000.0)
    assert check(plan(grace=1.0, restarts=3), current, app=app, clock=clock) is None
    assert clock.now >= 1001.0  # the whole grace period was watched


def test_a_crash_loop_after_the_grace_period_is_caught_at_the_end(current: Path) -> None:
    app = ExitingApp(codes=[2, 2, 2])
    assert check(plan(("./ok.sh",), grace=0.0, restarts=3), current, app=app) == (
        "the app crash-looped: exited 3 times (last exit code 2)")
    assert app.looks == 1  # no grace period: only the look after the checks


def test_a_crash_loop_limit_below_one_still_needs_one_exit(current: Path) -> None:
    assert check(plan(restarts=0), current, app=ExitingApp(codes=[])) is None
    assert check(plan(restarts=0), current, app=ExitingApp(codes=[9])) == (
        "the app crash-looped: exited 1 times (last exit code 9)")
