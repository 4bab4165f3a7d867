"""The agent's local status API against a web page and a local user (issue 12 §5).

A page in a browser on the device can send "simple" cross-site requests to loopback
(a form or ``fetch`` with ``text/plain``, no preflight) and, by DNS rebinding, make its
own name resolve to 127.0.0.1. Another local user can reach loopback too. Neither may
change what the device runs; the page may not even read its status.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleetup.agent import Daemon, StatusApi
from tests.security._table import Attack, attack, rows, run_row
from tests.support.fake_source import agent_over

ATTACKS: list[Attack] = []
ROLLBACK = "/api/updates/rollback"


@dataclass
class Api:
    daemon: Daemon
    url: str
    port: int

    def queued(self) -> int:
        return self.daemon.requests.qsize()


@pytest.fixture
def status_api(tmp_path: Path) -> Iterator[Api]:
    """A daemon's status API on a loopback port (the daemon itself does not run, so any
    change that got through stays visible in its queue)."""
    agent, _ = agent_over(tmp_path / "repo", tmp_path / "device")
    daemon = Daemon(agent)
    api = StatusApi(daemon, 0)
    api.start()
    try:
        yield Api(daemon, f"http://127.0.0.1:{api.port}", api.port)
    finally:
        api.stop()


def _token(api: Api) -> str:
    return (api.daemon.agent.store.layout.state / "status-api.token").read_text().strip()


@attack(ATTACKS, "status-api.cross-site-rollback", attacker="web-page",
        refusal="a cross-site text/plain POST (Origin: http://attacker.example) is refused, "
                "nothing is queued")
def _cross_site(status_api: Api) -> None:
    response = httpx.post(status_api.url + ROLLBACK, content=b'{"to": "1.0"}',
                          headers={"Origin": "http://attacker.example",
                                   "Content-Type": "text/plain"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "foreign-origin"
    assert status_api.queued() == 0


@attack(ATTACKS, "status-api.dns-rebinding", attacker="web-page",
        refusal="a request naming a foreign Host (DNS rebinding) is not answered (421)")
def _rebinding(status_api: Api) -> None:
    for method, path in [("GET", "/api/updates/status"), ("POST", ROLLBACK)]:
        response = httpx.request(method, status_api.url + path,
                                 headers={"Host": f"attacker.example:{status_api.port}"})
        assert response.status_code == 421, path
        assert "version" not in response.text
    assert status_api.queued() == 0


@attack(ATTACKS, "status-api.simple-request-without-origin", attacker="web-page",
        refusal="a change not sent as application/json is refused (415), even with the "
                "token and no Origin")
def _not_json(status_api: Api) -> None:
    response = httpx.post(status_api.url + ROLLBACK, content=b"to=1.0",
                          headers={"Content-Type": "application/x-www-form-urlencoded",
                                   "Authorization": f"Bearer {_token(status_api)}"})
    assert response.status_code == 415
    assert status_api.queued() == 0


@attack(ATTACKS, "status-api.change-without-token", attacker="local-user",
        refusal="a JSON change from loopback without the local token is refused (401)")
def _no_token(status_api: Api) -> None:
    for token in (None, "guessed"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(status_api.url + ROLLBACK, json={}, headers=headers)
        assert response.status_code == 401
        assert "status-api.token" in response.json()["error"]["message"]
    assert status_api.queued() == 0
    # The agent's own user, with the token, is let through.
    allowed = httpx.post(status_api.url + ROLLBACK, json={},
                         headers={"Authorization": f"Bearer {_token(status_api)}"})
    assert allowed.status_code == 202
    assert status_api.queued() == 1


@attack(ATTACKS, "status-api.token-readable-by-others", attacker="local-user",
        refusal="the token file is mode 0600, owned by the agent's user")
def _token_file(status_api: Api) -> None:
    info = (status_api.daemon.agent.store.layout.state / "status-api.token").stat()
    assert info.st_mode & 0o777 == 0o600


@rows(ATTACKS)
def test_attack(row: Attack, request: pytest.FixtureRequest) -> None:
    run_row(row, request)
