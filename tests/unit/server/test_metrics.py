"""Metrics labels and counting, without a server."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.exposition import generate_latest

from fleetup.server._metrics import Metrics, route_label


def test_route_labels_are_templates_with_their_mount_prefix() -> None:
    route = SimpleNamespace(path="/rollouts/{rollout_id}")
    assert route_label({"path": "/api/v1/rollouts/7", "route": route}) == (
        "/api/v1/rollouts/{rollout_id}")
    assert route_label({"path": "/rollouts/7", "route": route}) == "/rollouts/{rollout_id}"
    assert route_label({"path": "/static/x.css",
                        "route": SimpleNamespace(path="/static/{path:path}")}) == (
        "/static/{path:path}")
    assert route_label({"path": "/repo/metadata/1.root.json", "root_path": "/repo/metadata"}
                       ) == "/repo/metadata"
    assert route_label({"path": "/nope", "root_path": ""}) == "unmatched"


def test_checkins_are_counted_by_status_and_timed() -> None:
    metrics = Metrics(None, "/api/v1/devices/checkin")
    for status in (200, 200, 503):
        metrics.observe("POST", "/api/v1/devices/checkin", status, 0.002)
    metrics.observe("GET", "/api/v1/rollouts", 200, 0.02)
    metrics.count_events(["committed", "committed", "error"])
    text = generate_latest(metrics.registry).decode()
    assert 'fleetup_checkins_total{status="200"} 2.0' in text
    assert 'fleetup_checkins_total{status="503"} 1.0' in text
    assert 'fleetup_events_total{type="committed"} 2.0' in text
    assert ('fleetup_http_request_duration_seconds_bucket{le="0.0025",method="POST",'
            'route="/api/v1/devices/checkin",status="200"} 2.0') in text
    assert 'route="/api/v1/rollouts"' in text
    assert 'fleetup_checkins_total{status="200"}' in metrics.exposition().decode()
