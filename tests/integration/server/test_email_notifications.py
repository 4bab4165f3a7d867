"""E-mail notifications through the alert outbox, to a real SMTP server on loopback:
a subscription hears of the events it chose, once each; mail raised while the SMTP
server is down is retried and arrives exactly once when it is up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.server.conftest import Fleet, build_fleet
from tests.support.fleet import wait_for
from tests.support.smtp import SMTPServer

FAST = {
    "FLEETUP_SERVER_WEBHOOK_POLL_SECONDS": "0.1",
    "FLEETUP_SERVER_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "FLEETUP_SERVER_WEBHOOK_BACKOFF_MAX_SECONDS": "0.4",
    "FLEETUP_SERVER_SMTP_TIMEOUT_SECONDS": "2",
    "FLEETUP_SERVER_SMTP_HOST": "127.0.0.1",
    "FLEETUP_SERVER_SMTP_FROM": "fleet@example.test",
}


def smtp_fleet(tmp_path: Path, db_url: str, smtp: SMTPServer) -> Fleet:
    return build_fleet(tmp_path, db_url, env={**FAST, "FLEETUP_SERVER_SMTP_PORT":
                                              str(smtp.port)})


def subscribe(fleet: Fleet, **body: Any) -> dict[str, Any]:
    with fleet.server.client(fleet.tokens["admin"]) as admin:
        response = admin.post("/api/v1/notifications", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


def deliveries(fleet: Fleet) -> list[dict[str, Any]]:
    with fleet.server.client(fleet.tokens["admin"]) as admin:
        response = admin.get("/api/v1/notifications/deliveries")
        assert response.status_code == 200, response.text
        return list(response.json()["data"])


def start_and_pause(fleet: Fleet) -> int:
    with fleet.server.client(fleet.tokens["publisher"]) as publisher:
        started = publisher.post("/api/v1/rollouts", json={
            "app": "hello", "version": "1.1", "channel": "stable", "stages": [10, 100],
            "soak_seconds": 3600})
        assert started.status_code == 201, started.text
        rollout_id = int(started.json()["id"])
        paused = publisher.post(f"/api/v1/rollouts/{rollout_id}/pause")
        assert paused.status_code == 200, paused.text
    return rollout_id


def test_chosen_events_are_mailed_once_each(tmp_path: Path, db_url: str) -> None:
    smtp = SMTPServer().start()
    fleet = smtp_fleet(tmp_path, db_url, smtp)
    try:
        subscribe(fleet, name="ops", recipients=["ops@example.test", "lead@example.test"],
                  events=["release.pushed", "rollout.paused"])
        subscribe(fleet, name="other app", recipients=["x@example.test"],
                  events=["release.pushed"], app="another")
        assert fleet.push("1.1") == 0
        assert fleet.push("1.1") == 0  # already there: no second mail
        rollout_id = start_and_pause(fleet)

        wait_for(lambda: len(deliveries(fleet)) == 2
                 and all(d["state"] == "delivered" for d in deliveries(fleet)),
                 what="two mails delivered")
        got = smtp.received()
        assert len(got) == 2
        subjects = sorted(str(m["Subject"]) for _, m in got)
        assert subjects == [
            "[fleetup] release hello 1.1 pushed",
            f"[fleetup] rollout {rollout_id} paused: hello 1.1 on stable"]
        for recipients, message in got:
            assert sorted(recipients) == ["lead@example.test", "ops@example.test"]
            assert message["From"] == "fleet@example.test"
            key = next(d["idempotency_key"] for d in deliveries(fleet)
                       if d["subject"] == message["Subject"])
            assert str(message["Message-ID"]).strip() == f"<{key}@fleetup>"
        with fleet.server.client(fleet.tokens["admin"]) as admin:
            audit = admin.get("/api/v1/audit").json()["data"]
        assert any(a["action"] == "notification.create" for a in audit)
    finally:
        fleet.server.stop()
        smtp.stop()


def test_mail_raised_while_smtp_is_down_arrives_once_when_it_is_up(
        tmp_path: Path, db_url: str) -> None:
    smtp = SMTPServer()  # not started: its port refuses connections
    fleet = smtp_fleet(tmp_path, db_url, smtp)
    try:
        subscribe(fleet, name="ops", recipients=["ops@example.test"],
                  events=["rollout.paused"])
        assert fleet.push("1.1") == 0
        start_and_pause(fleet)
        wait_for(lambda: [d["attempts"] >= 2 for d in deliveries(fleet)] == [True],
                 what="the mail retried at least twice")
        (pending,) = deliveries(fleet)
        assert pending["state"] == "pending"
        assert "Connection" in pending["last_error"], pending["last_error"]

        smtp.start()
        wait_for(lambda: deliveries(fleet)[0]["state"] == "delivered", what="mail delivered")
        (delivered,) = deliveries(fleet)
        assert delivered["attempts"] > pending["attempts"]
        assert len(smtp.received()) == 1
    finally:
        fleet.server.stop()
        smtp.stop()
