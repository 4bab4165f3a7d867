"""Attacks on the fleet server's request handling: sizes, shapes, guessing, takeover.

One real ``fleetup server`` (SQLite) on loopback serves every row. Rows that guess
credentials each come from their own loopback address (127.0.0.N): the limit is per
client address, so they cannot disturb each other, and each shows that another address
is still served.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.server.conftest import Fleet, build_fleet
from tests.security._table import Attack, attack, rows, run_row
from tests.support.fleet import SimDevice

ATTACKS: list[Attack] = []

BURST = 5  # failed authentications an address may make before it is answered 429
MB = 1 << 20


@pytest.fixture(scope="module")
def server_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("requests")
    built = build_fleet(base, f"sqlite:///{base / 'data' / 'fleetup.db'}", env={
        "FLEETUP_SERVER_AUTH_FAILURE_BURST": str(BURST),
        "FLEETUP_SERVER_AUTH_FAILURES_PER_MINUTE": "6"})
    try:
        yield built
    finally:
        built.server.stop()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes: it sees a transient spike."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert found is not None
    return int(found[1]) * 1024


def _raw(fleet: Fleet, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", fleet.server.port), timeout=10)
    sock.sendall(head.encode())
    return sock


def _status_and_body(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one HTTP response the server sends, without sending the body it declared."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", data.partition(b"\r\n\r\n")[0], re.I)
    return int(found[1]) if found else 0


def _declared(fleet: Fleet, path: str, size: int, token: str = "") -> tuple[int, str]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with _raw(fleet, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {size}\r\n{auth}\r\n") as sock:
        status, body = _status_and_body(sock)
    return status, body["error"]["code"]


def _client(fleet: Fleet, address: str, token: str = "") -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=fleet.server.url, headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address))


def _guess_until_refused(send: Any) -> httpx.Response:
    """Send wrong credentials until the server stops answering them one by one."""
    for _ in range(BURST):
        assert send().status_code == 401
    refused: httpx.Response = send()
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    return refused


# -- sizes ------------------------------------------------------------------------------


@attack(ATTACKS, "server.enroll-streamed-100mb-body", attacker="anyone",
        refusal="the server stops reading at the route's cap (413); its memory does not "
                "grow by the body")
def _enroll_streamed_body(server_fleet: Fleet) -> None:
    pid = server_fleet.server.process.pid  # type: ignore[union-attr]
    before = _peak_rss(pid)
    sent, chunk = 0, b"x" * 65536
    with _raw(server_fleet, "POST /api/v1/devices/enroll HTTP/1.1\r\nHost: x\r\n"
                            "Content-Type: application/json\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n") as sock:
        try:
            while sent < 100 * MB:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:
            pass  # the server answered 413 and closed the connection
    assert _peak_rss(pid) - before < 30 * MB
    assert sent < 100 * MB, "the server read the whole 100 MB body"


@attack(ATTACKS, "server.enroll-declared-100mb-body", attacker="anyone",
        refusal="413 too_large on the Content-Length alone, before a byte is read")
def _enroll_declared_body(server_fleet: Fleet) -> None:
    assert _declared(server_fleet, "/api/v1/devices/enroll", 100 * MB) == (413, "too_large")


@attack(ATTACKS, "server.checkin-oversized-body-before-auth", attacker="anyone",
        refusal="the check-in fast path answers 413 before it looks at the token")
def _checkin_declared_body(server_fleet: Fleet) -> None:
    for token in ("", "fud_" + "A" * 43):
        assert _declared(server_fleet, "/api/v1/devices/checkin", MB, token) == (
            413, "too_large")


# -- shapes -----------------------------------------------------------------------------


def _report(device: SimDevice, events: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{device.server}/api/v1/devices/events", json={"events": events},
                      headers={"Authorization": f"Bearer {device.token}"}, timeout=30)


def _history(fleet: Fleet, device: SimDevice) -> int:
    with fleet.server.client(fleet.tokens["viewer"]) as viewer:
        count: int = viewer.get(f"/api/v1/devices/{device.device_id}/history").json()["count"]
        return count


@attack(ATTACKS, "server.event-details-oversized", attacker="device",
        refusal="422: an event's details are at most 4 KiB as JSON; nothing is stored")
def _event_details_oversized(server_fleet: Fleet) -> None:
    device = server_fleet.device(version="1.0")
    event = device.event("error", details={"blob": "x" * 500_000})
    response = _report(device, [event])
    assert response.status_code == 422, response.text
    assert _history(server_fleet, device) == 0


@attack(ATTACKS, "server.event-details-nested-900", attacker="device",
        refusal="422 (not a 500 RecursionError) for details nested 900 levels deep")
def _event_details_nested(server_fleet: Fleet) -> None:
    device = server_fleet.device(version="1.0")
    nested: dict[str, Any] = {}
    for _ in range(900):
        nested = {"a": nested}
    response = _report(device, [device.event("error", details=nested)])
    assert response.status_code == 422, response.text
    assert "nested deeper" in response.text


@attack(ATTACKS, "server.events-batch-over-cap", attacker="device",
        refusal="422 for more than 500 events in one report")
def _events_batch(server_fleet: Fleet) -> None:
    device = server_fleet.device(version="1.0")
    response = _report(device, [device.event("check") for _ in range(501)])
    assert response.status_code == 422, response.text
    assert _history(server_fleet, device) == 0


# -- guessing credentials ---------------------------------------------------------------


@attack(ATTACKS, "server.api-token-guessing", attacker="anyone",
        refusal="429 + Retry-After after 5 refused operator tokens from one address, "
                "even for a valid token; other addresses are still served")
def _api_token_guessing(server_fleet: Fleet) -> None:
    with _client(server_fleet, "127.0.0.11") as client:
        refused = _guess_until_refused(lambda: client.get(
            "/api/v1/releases", headers={"Authorization": f"Bearer fuo_{uuid.uuid4().hex}"}))
        assert refused.json()["error"]["code"] == "rate_limited"
        valid = {"Authorization": f"Bearer {server_fleet.tokens['viewer']}"}
        assert client.get("/api/v1/releases", headers=valid).status_code == 429
    with _client(server_fleet, "127.0.0.12", server_fleet.tokens["viewer"]) as other:
        assert other.get("/api/v1/releases").status_code == 200


@attack(ATTACKS, "server.device-token-guessing", attacker="anyone",
        refusal="429 + Retry-After after 5 refused device tokens, on the check-in fast "
                "path and on the other device routes")
def _device_token_guessing(server_fleet: Fleet) -> None:
    device = server_fleet.device(version="1.0")
    body = {"device_id": device.device_id, "app": "hello", "platform": device.platform}
    with _client(server_fleet, "127.0.0.13") as client:
        _guess_until_refused(lambda: client.post(
            "/api/v1/devices/checkin", json=body,
            headers={"Authorization": f"Bearer fud_{uuid.uuid4().hex}"}))
        me = client.get("/api/v1/devices/me",
                        headers={"Authorization": f"Bearer {device.token}"})
        assert me.status_code == 429
    assert device.checkin()["action"] in ("none", "install")  # from 127.0.0.1


@attack(ATTACKS, "server.enrollment-token-guessing", attacker="anyone",
        refusal="429 + Retry-After after 5 refused enrollment tokens from one address")
def _enrollment_token_guessing(server_fleet: Fleet) -> None:
    def enroll() -> httpx.Response:
        return client.post("/api/v1/devices/enroll", json={
            "enrollment_token": f"fue_{uuid.uuid4().hex}", "device_id": uuid.uuid4().hex,
            "app": "hello", "platform": "linux-x86_64"})

    with _client(server_fleet, "127.0.0.14") as client:
        _guess_until_refused(enroll)


def _form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found[1]


@attack(ATTACKS, "server.dashboard-signin-guessing", attacker="anyone",
        refusal="the sign-in form answers 429 + Retry-After after 5 wrong tokens from one "
                "address")
def _dashboard_signin_guessing(server_fleet: Fleet) -> None:
    with _client(server_fleet, "127.0.0.15") as browser:
        page = [browser.get("/login").text]

        def sign_in() -> httpx.Response:
            response = browser.post("/login", data={"token": f"fuo_{uuid.uuid4().hex}",
                                                    "csrf": _form_token(page[0])})
            page[0] = response.text
            return response

        refused = _guess_until_refused(sign_in)
        assert "Too many failed sign-ins" in refused.text


# -- takeover ---------------------------------------------------------------------------


@attack(ATTACKS, "server.reenroll-takes-device-over", attacker="enrollment",
        refusal="409 device_enrolled: an enrolled id needs its own token or an admin's "
                "reset; the real device keeps its token, channel and tags")
def _reenroll_takeover(server_fleet: Fleet) -> None:
    victim = server_fleet.device(version="1.0", tags={"site": "plant-1"})
    attacker = httpx.post(f"{server_fleet.server.url}/api/v1/devices/enroll", timeout=30, json={
        "enrollment_token": server_fleet.tokens["enroll"], "device_id": victim.device_id,
        "app": "hello", "platform": victim.platform, "tags": {"site": "evil"}})
    assert attacker.status_code == 409, attacker.text
    assert attacker.json()["error"]["code"] == "device_enrolled"
    assert "device_token" not in attacker.text
    with server_fleet.server.client(server_fleet.tokens["viewer"]) as viewer:
        record = viewer.get(f"/api/v1/devices/{victim.device_id}").json()
    assert record["tags"] == {"site": "plant-1"}
    assert victim.checkin()["action"] in ("none", "install")


@rows(ATTACKS)
def test_attack(row: Attack, request: pytest.FixtureRequest) -> None:
    run_row(row, request)
