"""Alert webhooks through the outbox: a receiver on loopback that is down (connection
refused) while alerts are raised, a server killed and restarted meanwhile, two worker
processes sending — and each alert arrives exactly once when the receiver is back."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

from tests.integration.server.conftest import Fleet, build_fleet
from tests.support.fleet import wait_for
from tests.support.webhook import WebhookReceiver

# Rules evaluated and the outbox polled every ~0.2 s; retries after 0.2, 0.4, 0.8, 0.8 s...
FAST_ALERTS = {
    "FLEETUP_SERVER_ALERT_TICK_SECONDS": "0.2",
    "FLEETUP_SERVER_WEBHOOK_POLL_SECONDS": "0.1",
    "FLEETUP_SERVER_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "FLEETUP_SERVER_WEBHOOK_BACKOFF_MAX_SECONDS": "0.8",
    "FLEETUP_SERVER_WEBHOOK_TIMEOUT_SECONDS": "1",
}
SECRET = "s3cret-for-signatures"


def alerts(fleet: Fleet) -> list[dict[str, Any]]:
    with fleet.server.client(fleet.tokens["viewer"]) as viewer:
        response = viewer.get("/api/v1/alerts", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])


def add_rule(fleet: Fleet, **body: Any) -> dict[str, Any]:
    with fleet.server.client(fleet.tokens["admin"]) as admin:
        response = admin.post("/api/v1/alerts/rules", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


def attempts(fleet: Fleet) -> list[int]:
    return [d["attempts"] for a in alerts(fleet) for d in a["deliveries"]]


def test_each_alert_arrives_once_across_downtime_restart_and_two_workers(
        tmp_path: Path, db_url: str) -> None:
    receiver = WebhookReceiver()  # not started: its port refuses connections
    fleet = build_fleet(tmp_path, db_url, env=FAST_ALERTS, workers=2)
    try:
        integrity = add_rule(fleet, name="bad bytes", kind="integrity_failure",
                             webhook_url=receiver.url, webhook_secret=SECRET)
        add_rule(fleet, name="rollbacks", kind="rollback", webhook_url=receiver.url)
        assert integrity["signed"] is True
        assert "webhook_secret" not in integrity
        first, second, third = (fleet.device(version="1.0") for _ in range(3))
        first.report(first.event("verify-failed", version="1.1", reason="hash mismatch"))
        second.report(second.event("verify-failed", version="1.1", reason="bad signature"))
        # The same device failing the same version again is the same condition: no new alert.
        second.report(second.event("verify-failed", version="1.1", reason="bad signature"))
        third.report(third.event("rolled-back", version="1.0", from_version="1.1",
                                 reason="health check: exit 3"))

        # Three alerts, each with one delivery that keeps failing and being retried.
        wait_for(lambda: len(alerts(fleet)) == 3 and min(attempts(fleet)) >= 2,
                 what="three alerts retried at least twice")
        deliveries = [d for a in alerts(fleet) for d in a["deliveries"]]
        assert len(deliveries) == 3
        assert all(d["state"] == "pending" for d in deliveries)
        assert all("ConnectError" in d["last_error"] for d in deliveries)
        before_restart = {d["id"]: d["attempts"] for d in deliveries}

        fleet.server.kill()  # SIGKILL, both workers: nothing is flushed or finished
        fleet.server.start()

        def retried_since_restart() -> bool:
            now = {d["id"]: d["attempts"] for a in alerts(fleet) for d in a["deliveries"]}
            return all(now[i] > before_restart[i] for i in before_restart)

        wait_for(retried_since_restart, what="each delivery retried after the restart")
        assert not receiver.received

        receiver.start()
        wait_for(lambda: all(d["state"] == "delivered"
                             for a in alerts(fleet) for d in a["deliveries"]),
                 what="every delivery to succeed")
        # A duplicate would be sent before its row is marked delivered; give any such
        # straggler a few poll rounds to arrive before counting.
        time.sleep(1.0)
        raised = alerts(fleet)
        bodies = receiver.bodies()
        assert sorted(b["id"] for b in bodies) == sorted(a["id"] for a in raised)
        keys = {d["idempotency_key"]: a["id"] for a in raised for d in a["deliveries"]}
        assert {b["idempotency_key"]: b["id"] for b in bodies} == keys
        assert all(r.headers["Idempotency-Key"] == r.json["idempotency_key"]
                   for r in receiver.received)
        # Retried while down, before and after the restart, then delivered.
        assert all(d["attempts"] >= before_restart[d["id"]] + 2
                   for a in raised for d in a["deliveries"])
        kinds = sorted((b["kind"], b["key"]) for b in bodies)
        assert kinds == sorted([
            ("integrity_failure", f"integrity:{first.device_id}:1.1"),
            ("integrity_failure", f"integrity:{second.device_id}:1.1"),
            ("rollback", "version:hello:1.1:rollback")])
        for request in receiver.received:
            signed = request.json["rule"]["name"] == "bad bytes"
            expected = "sha256=" + hmac.new(SECRET.encode(), request.body,
                                            hashlib.sha256).hexdigest()
            assert request.headers.get("X-Fleetup-Signature") == (expected if signed else None)
        with fleet.server.client() as anyone:
            metrics = anyone.get("/metrics").text
        assert 'fleetup_webhook_deliveries{state="delivered"} 3.0' in metrics
    finally:
        fleet.server.stop()
        receiver.stop()
