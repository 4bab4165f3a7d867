"""The app supervisor with real child processes; restart delays on a fake clock."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetup.agent._supervisor import AppSupervisor, CommandRestarter, NoRestarter
from fleetup.errors import HealthCheckError
from tests.support.clock import FakeClock
from tests.support.fleet import wait_for
from tests.support.trees import make_tree

ENV = dict(os.environ)






def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie not yet reaped by init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for version in ("1.0", "1.1"):
        make_tree(tmp_path / "releases" / version, {"VERSION": version})
    os.symlink("releases/1.0", tmp_path / "current")
    return tmp_path


@pytest.fixture
def supervisors() -> Iterator[list[AppSupervisor]]:
    """Supervisors made by a test; every one is closed afterwards, whatever happened."""
    made: list[AppSupervisor] = []
    yield made
    for supervisor in made:
        supervisor.close()


def make(supervisors: list[AppSupervisor], root: Path, script: str, **kwargs: object
         ) -> AppSupervisor:
    supervisor = AppSupervisor(["sh", "-c", script], root / "current", lambda: ENV,
                               **kwargs)  # type: ignore[arg-type]
    supervisors.append(supervisor)
    return supervisor


def test_the_app_starts_in_the_release_current_points_to(root: Path,
                                                         supervisors: list[AppSupervisor]
                                                         ) -> None:
    app = make(supervisors, root, "exec sleep 30")
    app.start()
    assert app.running
    assert app.process is not None
    assert Path(f"/proc/{app.process.pid}/cwd").resolve() == (root / "releases" / "1.0")
    pid = app.process.pid
    app.start()  # already running: nothing happens
    assert app.process.pid == pid


def test_restart_after_a_switch_runs_the_new_release(root: Path,
                                                     supervisors: list[AppSupervisor]) -> None:
    app = make(supervisors, root, "exec sleep 30")
    app.start()
    assert app.process is not None
    first = app.process.pid
    os.replace(_link(root, "releases/1.1"), root / "current")
    app.restart()
    assert app.process is not None
    assert app.process.pid != first
    assert gone(first)
    assert Path(f"/proc/{app.process.pid}/cwd").resolve() == (root / "releases" / "1.1")


def _link(root: Path, target: str) -> Path:
    tmp = root / "current.tmp"
    os.symlink(target, tmp)
    return tmp


def test_an_app_that_exits_is_restarted_and_its_exit_codes_recorded(
        root: Path, supervisors: list[AppSupervisor]) -> None:
    clock = FakeClock(500.0)
    app = make(supervisors, root, "exit 3", clock=clock)
    app.start()
    for expected_starts, backoff in ((1, 0.5), (2, 1.0)):
        assert app.process is not None
        app.process.wait(timeout=20)
        started = clock.now
        app.poll()                     # records the exit, waits before restarting
        assert not app.running
        assert app.exits[-1] == (started, 3)
        clock.now += backoff - 0.01
        app.poll()
        assert app.process is None     # the back-off has not passed yet
        clock.now += 0.01
        app.poll()                     # now it starts again
        assert app.process is not None
        assert len(app.exits) == expected_starts
    assert app.exits_since(0.0)[:2] == [3, 3]
    assert app.exits_since(clock.now + 1) == []


def test_a_restart_resets_the_back_off(root: Path, supervisors: list[AppSupervisor]) -> None:
    clock = FakeClock(500.0)
    app = make(supervisors, root, "exit 1", clock=clock)
    app.start()
    assert app.process is not None
    app.process.wait(timeout=20)
    app.poll()
    assert app.process is None
    app.restart()                      # an update switched: start at once
    assert app.process is not None


def test_stop_kills_the_whole_process_group(root: Path, tmp_path: Path,
                                            supervisors: list[AppSupervisor]) -> None:
    pidfile = tmp_path / "child.pid"
    app = make(supervisors, root, f"sleep 30 & echo $! > {pidfile}; wait")
    app.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the child's pid",
             timeout=20.0)
    child = int(pidfile.read_text())
    assert app.process is not None
    parent = app.process.pid
    assert not gone(child)
    app.stop()
    assert not app.running
    wait_for(lambda: gone(child), what="the app's child to die", timeout=20.0)
    assert gone(parent)


def test_stop_escalates_to_sigkill(root: Path, tmp_path: Path,
                                   supervisors: list[AppSupervisor]) -> None:
    ready = tmp_path / "ready"
    app = make(supervisors, root, f"trap '' TERM; touch {ready}; sleep 30 & wait; sleep 30",
               stop_timeout=0.3)
    app.start()
    wait_for(ready.exists, what="the app to ignore SIGTERM", timeout=20.0)
    assert app.process is not None
    process = app.process
    app.stop()
    assert process.returncode == -9


def test_no_current_means_no_app(tmp_path: Path, supervisors: list[AppSupervisor]) -> None:
    app = make(supervisors, tmp_path, "exec sleep 30")
    app.start()
    app.poll()
    assert not app.running
    assert app.exits_since(0.0) == []


def test_an_app_that_cannot_start(root: Path, supervisors: list[AppSupervisor]) -> None:
    app = AppSupervisor(["./no-such-binary"], root / "current", lambda: ENV)
    supervisors.append(app)
    with pytest.raises(HealthCheckError, match=r"cannot start the app \(./no-such-binary\)"):
        app.start()
    assert not app.running


def test_the_app_log_gets_its_output(root: Path, tmp_path: Path,
                                     supervisors: list[AppSupervisor]) -> None:
    log = tmp_path / "app.log"
    app = make(supervisors, root, "echo hello from $(cat VERSION); echo oops >&2",
               log_file=log)
    app.start()
    assert app.process is not None
    app.process.wait(timeout=20)
    app.close()
    assert log.read_text().splitlines() == ["hello from 1.0", "oops"]


def test_command_restarter(root: Path) -> None:
    marker = root / "restarted"
    CommandRestarter(["sh", "-c", f"pwd > {marker}"], root, lambda: ENV).restart()
    assert marker.read_text().strip() == str(root)
    with pytest.raises(HealthCheckError, match="restart command exited 5: unit failed"):
        CommandRestarter(["sh", "-c", "echo 'unit failed' >&2; exit 5"], root,
                         lambda: ENV).restart()
    with pytest.raises(HealthCheckError, match="restart command failed"):
        CommandRestarter(["/no/such/command"], root, lambda: ENV).restart()
    with pytest.raises(HealthCheckError, match="restart command failed"):
        CommandRestarter([sys.executable, "-c", "import time; time.sleep(30)"], root,
                         lambda: ENV, timeout=0.5).restart()
    assert CommandRestarter(["true"], root, lambda: ENV).exits_since(0.0) == []


def test_no_restarter() -> None:
    nothing = NoRestarter()
    nothing.restart()
    assert nothing.exits_since(0.0) == []
