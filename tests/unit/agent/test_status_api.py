"""The local status API on a loopback port, in front of a running daemon."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleetup.agent import Daemon, StatusApi
from fleetup.agent._config import ModulesConfig, PolicyConfig
from fleetup.agent._daemon import Request
from fleetup.agent._modules import ModuleHost
from tests.support.fake_source import FakeSource, agent_over
from tests.support.fleet import wait_for
from tests.support.releases import SampleRepo

PREFIX = "/api/updates"


pytestmark = pytest.mark.usefixtures("no_fsync")




@dataclass
class Served:
    daemon: Daemon
    source: FakeSource
    client: httpx.Client
    repo: SampleRepo

    def installed(self) -> str | None:
        return self.daemon.agent.store.installed_version()


CONFIG = {"poll_interval": 3600.0, "policy": PolicyConfig(auto=frozenset()),
          "modules": ModulesConfig(tick_interval=3600.0)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleRepo, Path]:
    """1.0, 1.1 and 1.2 published; a device root with 1.0 and 1.1 installed."""
    repo = SampleRepo.create(tmp_path_factory.mktemp("status-api"))
    for version in ("1.0", "1.1", "1.2"):
        repo.publish(version, notes=f"notes of {version}")
    device = repo.path.parent / "device"
    agent, _ = agent_over(repo.path, device, **CONFIG)
    agent.update(wanted="1.0")
    agent.update(wanted="1.1")
    return repo, device


@pytest.fixture
def served(prepared: tuple[SampleRepo, Path], tmp_path: Path) -> Iterator[Served]:
    """A copy of the prepared device run by a daemon whose policy installs nothing by
    itself (so its own polls change nothing), and its API on port 0."""
    repo, prepared_device = prepared
    shutil.copytree(prepared_device, tmp_path / "device", symlinks=True)
    agent, source = agent_over(repo.path, tmp_path / "device", **CONFIG)
    daemon = Daemon(agent, modules=ModuleHost(agent.store.layout.current,
                                              load_entry_points=False))
    api = StatusApi(daemon, 0)
    api.start()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    wait_for(lambda: daemon.last_outcome is not None, what="the daemon's first poll")
    try:
        token = (tmp_path / "device" / ".fleetup" / "status-api.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=60,
                          headers=headers) as client:
            yield Served(daemon, source, client, repo)
    finally:
        daemon.stop.set()
        thread.join(timeout=60)
        api.stop()


def test_status_history_and_backups(served: Served) -> None:
    response = served.client.get(f"{PREFIX}/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert {"version", "state", "last_check", "pending"} <= set(body)
    assert (body["version"], body["state"]) == ("1.1", "idle")
    assert body["daemon"] == {"busy": False, "last_error": None}
    assert body["kept"] == ["1.0", "1.1"]
    assert body["pending"]["version"] == "1.2"  # the daemon's poll saw it, policy waits
    history = served.client.get(f"{PREFIX}/history").json()
    assert [(r["kind"], r["result"], r["to"], r["reason"]) for r in history] == [
        ("update", "committed", "1.0", "requested by the operator"),
        ("update", "committed", "1.1", "requested by the operator")]
    backups = served.client.get(f"{PREFIX}/backups").json()
    assert [(b["version"], b["current"], b["notes"]) for b in backups] == [
        ("1.0", False, "notes of 1.0"), ("1.1", True, "notes of 1.1")]
    assert all(b["size"] > 0 for b in backups)


def test_flags_of_the_fleet_server(served: Served) -> None:
    """The flags the agent kept from the fleet server, for the app (none yet: ``{}``)."""
    assert served.client.get(f"{PREFIX}/flags").json() == {}
    served.daemon.agent.store.save_flags({"color": "blue", "limit": 3})
    assert served.client.get(f"{PREFIX}/flags").json() == {"color": "blue", "limit": 3}


def test_check(served: Served) -> None:
    response = served.client.post(f"{PREFIX}/check")
    assert response.status_code == 200
    body = response.json()
    assert (body["installed"], body["available"], body["decision"]) == ("1.1", "1.2",
                                                                        "defer")
    assert served.installed() == "1.1"  # a check installs nothing


def test_a_check_that_fails_is_a_json_error(served: Served) -> None:
    served.source.offline = True
    response = served.client.post(f"{PREFIX}/check")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "check-failed"
    assert "cannot be reached" in response.json()["error"]["message"]


def test_install_a_version_on_purpose(served: Served) -> None:
    response = served.client.post(f"{PREFIX}/install/1.2")
    assert response.status_code == 202
    assert response.json() == {"accepted": True, "install": "1.2"}
    wait_for(lambda: served.installed() == "1.2", what="1.2 to be installed")
    assert served.client.get(f"{PREFIX}/status").json()["version"] == "1.2"


def test_rollback(served: Served) -> None:
    response = served.client.post(f"{PREFIX}/rollback", json={"to": "1.0"})
    assert response.status_code == 202
    assert response.json() == {"accepted": True, "rollback_to": "1.0"}
    wait_for(lambda: served.installed() == "1.0", what="the rollback to 1.0")
    response = served.client.post(f"{PREFIX}/rollback")  # no body: the other kept one
    assert response.status_code == 202
    wait_for(lambda: served.installed() == "1.1", what="the switch back to 1.1")


def test_errors_are_json(served: Served) -> None:
    for method, path, status, code in [
        ("GET", "/api/updates/nothing", 404, "not-found"),
        ("GET", "/", 404, "not-found"),
        ("POST", "/api/updates/status", 404, "not-found"),
        ("POST", "/api/updates/install/", 400, "bad-version"),
        ("POST", "/api/updates/install/1.0/x", 400, "bad-version"),
    ]:
        response = served.client.request(method, path)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), path
    response = served.client.post(f"{PREFIX}/rollback", json={"to": 3})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad-version"
    assert served.installed() == "1.1"


def test_install_of_no_such_release_is_refused_at_once(served: Served) -> None:
    """Issue 11 §3: not 202 and a failure later in the log."""
    response = served.client.post(f"{PREFIX}/install/9.9.9")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "cannot-install", "message": "no signed release 9.9.9 for this app and platform"}
    older = served.client.post(f"{PREFIX}/install/1.0")
    assert older.status_code == 409
    assert "not newer than the installed 1.1" in older.json()["error"]["message"]
    assert served.installed() == "1.1"


def test_rollback_to_a_release_that_is_not_kept_is_refused_at_once(served: Served) -> None:
    response = served.client.post(f"{PREFIX}/rollback", json={"to": "0.5"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not-kept"


def test_the_token_file_is_the_agents_users_only(served: Served) -> None:
    path = served.daemon.agent.store.layout.state / "status-api.token"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_token_file_others_can_read_is_replaced(tmp_path: Path) -> None:
    from fleetup.agent._status_api import load_token

    (tmp_path / "status-api.token").write_text("x" * 43)
    (tmp_path / "status-api.token").chmod(0o644)
    token = load_token(tmp_path)
    assert token != "x" * 43
    assert (tmp_path / "status-api.token").stat().st_mode & 0o777 == 0o600
    assert load_token(tmp_path) == token  # kept across restarts


def test_the_api_listens_on_loopback_only(tmp_path: Path) -> None:
    agent, _ = agent_over(tmp_path / "repo", tmp_path / "device")
    api = StatusApi(Daemon(agent), 0)
    try:
        assert api.server.server_address[0] == "127.0.0.1"
        assert api.port > 0
    finally:
        api.server.server_close()


def _stage(served: Served, version: str) -> None:
    """Stage ``version`` through the daemon (as its poll does with ``apply`` not "now")."""
    request = Request("update", version, download_only=True)
    served.daemon.requests.put(request)
    assert request.result.result(timeout=60).target == version
    assert served.daemon.agent.staged_version() == version


def test_install_of_the_staged_release_applies_it_with_no_network(served: Served) -> None:
    _stage(served, "1.2")
    status = served.client.get(f"{PREFIX}/status").json()
    assert status["staged"]["version"] == "1.2"
    assert status["progress"] is None
    served.source.offline = True
    response = served.client.post(f"{PREFIX}/install/1.2")
    assert response.status_code == 202
    assert response.json() == {"accepted": True, "install": "1.2", "apply": True}
    wait_for(lambda: served.installed() == "1.2", what="the staged 1.2 to be applied")
    assert served.client.get(f"{PREFIX}/status").json()["staged"] is None


def test_apply_switches_to_what_is_staged_and_refuses_when_nothing_is(served: Served) -> None:
    response = served.client.post(f"{PREFIX}/apply")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "nothing-staged"
    _stage(served, "1.2")
    response = served.client.post(f"{PREFIX}/apply")
    assert (response.status_code, response.json()) == (202, {"accepted": True, "apply": "1.2"})
    wait_for(lambda: served.installed() == "1.2", what="the staged 1.2 to be applied")
