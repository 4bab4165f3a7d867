"""A rollout only on a channel its release is signed for (issue 12 §4): devices would
refuse the release there, so the server refuses to start it, in one clear CLI line."""

from __future__ import annotations

import httpx

from tests.integration.server.conftest import Fleet
from tests.support.fleet import cli


def test_a_rollout_on_a_channel_the_release_is_not_signed_for_is_refused(
        shared_fleet: Fleet) -> None:
    fleet = shared_fleet
    refused = cli("rollout", "start", "--server", fleet.server.url, "--app", "hello",
                  "--version", "1.0", "--channel", "beta", "--stages", "100", check=False,
                  token=fleet.tokens["publisher"])
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "1.0 is signed for stable, not beta" in lines[0]
    response = httpx.post(f"{fleet.server.url}/api/v1/rollouts", timeout=30,
                          headers={"Authorization": f"Bearer {fleet.tokens['publisher']}"},
                          json={"app": "hello", "version": "1.0", "channel": "beta",
                                "stages": [100]})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "channel_not_signed"
    with fleet.server.client(fleet.tokens["viewer"]) as client:
        rollouts = client.get("/api/v1/rollouts").json()["data"]
    assert all(r["channel"] != "beta" for r in rollouts)
