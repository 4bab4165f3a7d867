"""Prometheus metrics, served as text at ``/metrics``.

Why a module of its own: operators already watch their servers with Prometheus, and
the questions they ask a fleet server — how many check-ins, how fast, which events,
which rollouts are running or paused — should be answerable there without the
dashboard. Two kinds of figures:

- **Counted in process memory** (no IO, so the check-in hot path pays a few
  microseconds): ``fleetup_checkins_total{status}``, ``fleetup_events_total{type}``
  (events stored, duplicates not counted) and the request latency histogram
  ``fleetup_http_request_duration_seconds{method,route,status}`` (``route`` is the
  route's template, e.g. ``/api/v1/rollouts/{rollout_id}``, so labels stay few).
- **Read from the database at scrape time** (one small GROUP BY each, the same from
  every process): ``fleetup_rollouts{state}``, ``fleetup_alerts_open`` and
  ``fleetup_webhook_deliveries{state}``.

Several worker processes (``fleetup server --workers N``) count in prometheus-client's
multiprocess mode: each worker's values live in files under ``PROMETHEUS_MULTIPROC_DIR``
and every scrape, whichever worker answers it, sums them all. ``fleetup server`` makes
that directory (a fresh temporary one) when it starts more than one worker, unless the
operator set the variable, in which case the directory must be empty at each start, as
prometheus-client requires.
Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetup.server._models import Alert, AlertDelivery, Rollout
from fleetup.server._rollouts import RolloutState

__all__ = ["Metrics", "MetricsMiddleware", "metrics_endpoint", "route_label"]

log = logging.getLogger("fleetup.server")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELIVERY_STATES = ("pending", "delivered", "failed", "cancelled")


class Metrics:
    """One app's metrics. ``sessions``: where the scrape-time gauges are read."""

    def __init__(self, sessions: sessionmaker[Session] | None, checkin_path: str) -> None:
        self.checkin_path = checkin_path
        self.registry = CollectorRegistry(auto_describe=True)
        self.checkins = Counter("fleetup_checkins", "Device check-ins, by HTTP status.",
                                ["status"], registry=self.registry)
        self.events = Counter("fleetup_events", "Device events stored (duplicates not "
                              "counted), by type.", ["type"], registry=self.registry)
        self.latency = Histogram("fleetup_http_request_duration_seconds",
                                 "Time to answer an HTTP request, by route template.",
                                 ["method", "route", "status"], buckets=_BUCKETS,
                                 registry=self.registry)
        self._children: dict[tuple[str, str, int], Any] = {}
        self._database = _DatabaseCollector(sessions) if sessions is not None else None
        if self._database is not None:
            self.registry.register(self._database)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request (cheap: cached label children, no IO)."""
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(method, route, str(status))
            if route == self.checkin_path:
                self._children[("checkin", route, status)] = self.checkins.labels(str(status))
        child.observe(seconds)
        if route == self.checkin_path:
            self._children[("checkin", route, status)].inc()

    def count_events(self, types: Iterable[str]) -> None:
        for kind in types:
            self.events.labels(kind).inc()

    def exposition(self) -> bytes:
        """The text format of every metric (all workers' in multiprocess mode)."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            if self._database is not None:
                registry.register(self._database)
            return generate_latest(registry)
        return generate_latest(self.registry)


class _DatabaseCollector(Collector):
    """Gauges read from the database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> Iterator[Metric]:
        # Names only: registering the collector must not query the database.
        yield from self._families({}, 0, {}, values=False)

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                rollouts = {state: int(count) for state, count in session.execute(
                    select(Rollout.state, func.count()).group_by(Rollout.state))}
                open_alerts = session.scalar(select(func.count()).select_from(Alert).where(
                    Alert.acknowledged_at.is_(None)))
                deliveries = {state: int(count) for state, count in session.execute(
                    select(AlertDelivery.state, func.count())
                    .where(AlertDelivery.transport == "webhook").group_by(AlertDelivery.state))}
        except SQLAlchemyError as e:
            log.warning("metrics: the database is unavailable: %s", e)
            return
        yield from self._families(rollouts, int(open_alerts or 0), deliveries)

    @staticmethod
    def _families(rollouts: dict[str, int], open_alerts: int, deliveries: dict[str, int],
                  values: bool = True) -> Iterator[Metric]:
        family = GaugeMetricFamily("fleetup_rollouts", "Rollouts by state.", labels=["state"])
        for state in RolloutState if values else ():
            family.add_metric([state.value], rollouts.get(state.value, 0))
        yield family
        yield GaugeMetricFamily("fleetup_alerts_open", "Alerts not acknowledged.",
                                value=open_alerts if values else None)
        family = GaugeMetricFamily("fleetup_webhook_deliveries",
                                   "Alert webhook deliveries by state.", labels=["state"])
        for name in _DELIVERY_STATES if values else ():
            family.add_metric([name], deliveries.get(name, 0))
        yield family


def route_label(scope: Scope) -> str:
    """The label of a request's route: its template with the prefix it was mounted
    under (``/api/v1/rollouts/{rollout_id}``), a static mount's path, or ``unmatched``."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        # Included routers report their own template without the prefix they were
        # included under: take that prefix from the request's path.
        if ":path}" not in template:
            depth = template.count("/")
            segments = scope["path"].split("/")
            if len(segments) > depth:
                return "/".join(segments[:len(segments) - depth]) + template
        return template
    root = scope.get("root_path")
    return str(root) if root else "unmatched"


class MetricsMiddleware:
    """Times every HTTP request (the outermost layer, so check-ins are counted too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            route = path if path == self.metrics.checkin_path else route_label(scope)
            self.metrics.observe(scope["method"], route, status,
                                 time.perf_counter() - started)


def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format (no token: scrape it over a network
    you trust, as with any exporter)."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
