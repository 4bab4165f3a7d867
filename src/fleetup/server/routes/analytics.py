"""Analytics (viewer): update rates, version distribution, time to update, stuck devices
and failure reasons. What each figure means is defined once, in ``_analytics``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fleetup.server._analytics import (
    Percentiles,
    Rates,
    failure_reasons_report,
    rates_report,
    stuck_report,
    time_to_update_report,
    version_counts,
    version_distribution,
)
from fleetup.server._models import utcnow
from fleetup.server._schemas import (
    FailureReasonPublic,
    FailureReasonsPublic,
    HourRatesPublic,
    PercentilesPublic,
    RatesPublic,
    StuckDevicePublic,
    StuckDevicesPublic,
    TimeToUpdatePublic,
    VersionCountPublic,
    VersionsPublic,
)
from fleetup.server.deps import SessionDep, ViewerDep
from fleetup.server.routes._params import IdFilter

router = APIRouter(prefix="/analytics", tags=["analytics"])

Hours = Annotated[int, Query(ge=1, le=24 * 90, description="The window: the last N hours "
                                                           "(by when the server received "
                                                           "the events).")]
App = Annotated[str | None, Query(description="Only this app's devices.")]


def _rates(rates: Rates) -> dict[str, Any]:
    return {"updates": rates.updates, "succeeded": rates.succeeded, "failed": rates.failed,
            "rolled_back": rates.rolled_back, "success_rate": rates.success_rate,
            "failure_rate": rates.failure_rate, "rollback_rate": rates.rollback_rate}


def _percentiles(p: Percentiles) -> PercentilesPublic:
    return PercentilesPublic(count=p.count, p50=p.p50, p90=p.p90, p95=p.p95, p99=p.p99,
                             max=p.max)


@router.get("/rates", response_model=RatesPublic)
def rates(session: SessionDep, _: ViewerDep, app: App = None, hours: Hours = 24
          ) -> RatesPublic:
    """Updates finished in the window: how many succeeded, failed and rolled back (each
    attempt once), in total and per hour (oldest first)."""
    total, hourly = rates_report(session, now=utcnow(), hours=hours, app=app)
    return RatesPublic(hours=hours, app=app, **_rates(total),
                       hourly=[HourRatesPublic(start=h.start, **_rates(h.rates))
                               for h in hourly])


@router.get("/versions", response_model=VersionsPublic)
def versions(session: SessionDep, _: ViewerDep, app: App = None) -> VersionsPublic:
    """Registered devices per app and version (newest first), with shares of the app."""
    rows = version_distribution(version_counts(session, app=app))
    return VersionsPublic(data=[VersionCountPublic(app=r.app, version=r.version,
                                                   devices=r.devices, share=r.share)
                                for r in rows], count=sum(r.devices for r in rows))


@router.get("/time-to-update", response_model=TimeToUpdatePublic)
def time_to_update(session: SessionDep, _: ViewerDep, app: App = None,
                   rollout_id: IdFilter = None, hours: Hours = 24 * 7
                   ) -> TimeToUpdatePublic:
    """Nearest-rank percentiles, in seconds, of the updates committed in the window:
    ``install_seconds`` from download start to commit on each device, and
    ``rollout_seconds`` from the rollout's start to each device's commit."""
    install, rollout = time_to_update_report(session, now=utcnow(), hours=hours, app=app,
                                             rollout_id=rollout_id)
    return TimeToUpdatePublic(hours=hours, app=app, rollout_id=rollout_id,
                              install_seconds=_percentiles(install),
                              rollout_seconds=_percentiles(rollout))


@router.get("/stuck", response_model=StuckDevicesPublic)
def stuck(session: SessionDep, _: ViewerDep, app: App = None,
          hours: Annotated[float, Query(ge=0, le=24 * 365)] = 24) -> StuckDevicesPublic:
    """Devices still behind their channel's target (its newest completed rollout) more
    than ``hours`` hours after that rollout completed."""
    rows = stuck_report(session, now=utcnow(), hours=hours, app=app)
    return StuckDevicesPublic(hours=hours, count=len(rows), data=[
        StuckDevicePublic(device_id=r.device_id, app=r.app, channel=r.channel,
                          version=r.version, target_version=r.target_version,
                          rollout_id=r.rollout_id, stuck_hours=r.stuck_hours,
                          last_seen=r.last_seen) for r in rows])


@router.get("/failure-reasons", response_model=FailureReasonsPublic)
def failure_reasons(session: SessionDep, _: ViewerDep, app: App = None,
                    rollout_id: IdFilter = None, hours: Hours = 24 * 7,
                    limit: Annotated[int, Query(ge=1, le=100)] = 10) -> FailureReasonsPublic:
    """The most frequent reasons given by failure events in the window."""
    rows = failure_reasons_report(session, now=utcnow(), hours=hours, app=app,
                                  rollout_id=rollout_id, limit=limit)
    return FailureReasonsPublic(hours=hours, count=len(rows), data=[
        FailureReasonPublic(reason=r.reason, count=r.count, devices=r.devices,
                            types=list(r.types)) for r in rows])
