"""Every endpoint checks who is calling: enumerated from the app, so new routes are
covered without touching this test."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from fleetup.agent._config import load_config
from fleetup.agent._fleet import FleetClient
from fleetup.agent._store import DeviceStore
from fleetup.errors import ServerAPIError
from fleetup.server import Settings, create_app
from tests.integration.server.conftest import Fleet
from tests.support.fleet import SimDevice, wait_for

WEAKER = {"viewer": None, "publisher": "viewer", "admin": "publisher"}


def _required_role(dependant: Any) -> str | None:
    for dependency in dependant.dependencies:
        role = getattr(dependency.call, "required_role", None)
        if role is not None:
            return str(role)
        found = _required_role(dependency)
        if found:
            return found
    return None


def _roles_by_operation(routes: list[Any], found: dict[str, str | None],
                        prefix: str = "") -> None:
    """Required role per OpenAPI operationId of every API route (FastAPI's default ids:
    the endpoint's name, its full path and the method), searching included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            operation = re.sub(r"\W", "_", f"{route.name}{prefix}{route.path_format}")
            for method in route.methods:
                found[f"{operation}_{method.lower()}"] = _required_role(route.dependant)
        nested = getattr(route, "original_router", None)  # FastAPI's included routers
        if nested is not None:
            context = getattr(route, "include_context", None)
            _roles_by_operation(nested.routes, found, prefix + getattr(context, "prefix", ""))


def api_routes(tmp_path: Path) -> list[tuple[str, str, str | None]]:
    """(method, path, required role or "device" or None) of every operation under /api/v1,
    enumerated from the app's OpenAPI document."""
    app = create_app(Settings(data_dir=tmp_path / "introspect"))
    roles: dict[str, str | None] = {}
    _roles_by_operation(list(app.routes), roles)
    routes = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/v1"):
                routes.append((method.upper(), path, roles[operation["operationId"]]))
    return routes


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def call(client: httpx.Client, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, concrete(path), headers=headers,
                          json={} if method in ("POST", "PUT", "PATCH") else None)


def test_every_endpoint_refuses_missing_wrong_and_weak_tokens(shared_fleet: Fleet,
                                                              tmp_path: Path) -> None:
    fleet = shared_fleet
    routes = api_routes(tmp_path)
    unauthenticated = [(m, p) for m, p, role in routes if role is None]
    assert unauthenticated == [("POST", "/api/v1/devices/enroll")]  # its token is in the body
    operator_routes = [(m, p, r) for m, p, r in routes if r not in (None, "device")]
    device_routes = [(m, p) for m, p, r in routes if r == "device"]
    assert len(operator_routes) >= 15
    assert {p for _, p in device_routes} == {"/api/v1/devices/checkin",
                                             "/api/v1/devices/events", "/api/v1/devices/me"}
    device = fleet.device(version="1.0")
    forged = "fuo_" + "A" * 43
    with httpx.Client(base_url=fleet.server.url, timeout=30) as client:
        for method, path, role in operator_routes:
            for token in (None, forged, "garbage", device.token):
                response = call(client, method, path, token)
                assert response.status_code == 401, (method, path, token, response.text)
                assert response.json()["error"]["code"] == "unauthorized"
            weaker = WEAKER[str(role)]
            if weaker:
                response = call(client, method, path, fleet.tokens[weaker])
                assert response.status_code == 403, (method, path, response.text)
                assert response.json()["error"]["code"] == "forbidden"
        for method, path in device_routes:
            for token in (None, forged.replace("fuo_", "fud_"), fleet.tokens["admin"]):
                response = call(client, method, path, token)
                assert response.status_code == 401, (method, path, token, response.text)


def test_a_device_reads_and_writes_only_itself(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    me, other = fleet.device(version="1.0"), fleet.device(version="1.0")
    headers = {"Authorization": f"Bearer {me.token}"}
    with httpx.Client(base_url=fleet.server.url, headers=headers, timeout=30) as client:
        assert client.get("/api/v1/devices/me").json()["id"] == me.device_id
        for path in (f"/api/v1/devices/{other.device_id}",
                     f"/api/v1/devices/{other.device_id}/history", "/api/v1/devices",
                     "/api/v1/rollouts", "/api/v1/audit"):
            assert client.get(path).status_code == 401, path
        body = {"device_id": other.device_id, "app": "hello", "platform": "linux-x86_64",
                "version": "1.0"}
        response = client.post("/api/v1/devices/checkin", json=body)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "device_mismatch"
    # Enrolling the same id again with its current token replaces it: the old one stops
    # working.
    old_token = me.token
    me.enroll(fleet.tokens["enroll"])
    assert me.token != old_token
    assert me.checkin()["action"] == "none"
    wait_for(lambda: httpx.get(f"{fleet.server.url}/api/v1/devices/me", headers={
        "Authorization": f"Bearer {old_token}"}).status_code == 401, what="the old token")
    # Events are filed under the token's device, whatever the body says.
    me.report(me.event("check", version="1.0"))
    with fleet.server.client(fleet.tokens["viewer"]) as viewer:
        assert viewer.get(f"/api/v1/devices/{other.device_id}/history").json()["count"] == 0
        assert viewer.get(f"/api/v1/devices/{me.device_id}/history").json()["count"] == 1


def test_an_enrolled_id_is_enrolled_again_after_an_admin_reset(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    device = fleet.device(version="1.0")
    lost = SimDevice(fleet.server.url, device_id=device.device_id)  # it lost its token
    body = {"enrollment_token": fleet.tokens["enroll"], "device_id": device.device_id,
            "app": "hello", "platform": device.platform}
    refused = httpx.post(f"{fleet.server.url}/api/v1/devices/enroll", json=body, timeout=30)
    assert refused.status_code == 409
    assert f"/api/v1/devices/{device.device_id}/reset" in refused.json()["error"]["message"]
    with fleet.server.client(fleet.tokens["publisher"]) as publisher:
        assert publisher.post(f"/api/v1/devices/{device.device_id}/reset").status_code == 403
    with fleet.server.client(fleet.tokens["admin"]) as admin:
        reset = admin.post(f"/api/v1/devices/{device.device_id}/reset")
        assert reset.status_code == 200
        assert ("device.reset", f"device:{device.device_id}") in {
            (e["action"], e["target"]) for e in admin.get("/api/v1/audit").json()["data"]}
    wait_for(lambda: httpx.get(f"{fleet.server.url}/api/v1/devices/me", headers={
        "Authorization": f"Bearer {device.token}"}).status_code == 401, what="the reset")
    lost.enroll(fleet.tokens["enroll"])
    assert lost.checkin()["action"] == "none"
    refused = httpx.post(f"{fleet.server.url}/api/v1/devices/enroll", json=body, timeout=30)
    assert refused.status_code == 409  # the reset let one enrollment through, no more


def test_roles_that_suffice_are_accepted_and_changes_are_audited(shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    with fleet.server.client(fleet.tokens["publisher"]) as publisher:
        assert publisher.get("/api/v1/releases").status_code == 200
    with fleet.server.client(fleet.tokens["admin"]) as admin:
        created = admin.post("/api/v1/tokens", json={"role": "viewer", "name": "ci"})
        assert created.status_code == 201
        new_token = created.json()["token"]
        channel = admin.post("/api/v1/channels", json={"name": "edge"})
        assert channel.status_code == 201
        assert admin.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 200
        audit = admin.get("/api/v1/audit").json()["data"]
    with fleet.server.client(new_token) as revoked:
        assert revoked.get("/api/v1/releases").status_code == 401
    actions = {(e["action"], e["actor"].split(":")[-1]) for e in audit}
    assert {("token.create", "test-admin"), ("channel.create", "test-admin"),
            ("token.revoke", "test-admin")} <= actions


def test_an_agent_that_lost_its_token_is_told_to_ask_for_a_reset(shared_fleet: Fleet,
                                                                 tmp_path: Path) -> None:
    """The real agent's fleet client: first enrollment, a lost token (409 with the way
    out in its message), and enrollment again once an admin reset the device."""
    fleet, device_id = shared_fleet, f"agent-{tmp_path.name[-12:]}"
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'app = "hello"\nroot = "{tmp_path / "device"}"\n'
                           f'server_url = "{fleet.server.url}/"\n'
                           f'enrollment_token = "{fleet.tokens["enroll"]}"\n'
                           f'trusted_root = "{tmp_path / "1.root.json"}"\n'
                           f'device_id = "{device_id}"\nplatform = "linux-x86_64"\n')
    config = load_config(config_file)
    client = FleetClient(config, DeviceStore(config.root))
    body = {"device_id": device_id, "app": "hello", "platform": "linux-x86_64"}
    try:
        assert client.checkin(body)["action"] == "none"
        (config.root / ".fleetup" / "fleet.json").unlink()
        with pytest.raises(ServerAPIError, match="have an admin reset it") as refused:
            client.checkin(body)
        assert refused.value.code == "device_enrolled"
        with fleet.server.client(fleet.tokens["admin"]) as admin:
            assert admin.post(f"/api/v1/devices/{device_id}/reset").status_code == 200
        assert client.checkin(body)["action"] == "none"
    finally:
        client.close()
