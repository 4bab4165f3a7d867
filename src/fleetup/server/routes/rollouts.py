"""Rollouts: start (publisher), dry run, status and per-device explanation (viewer), and
the operator's pause, resume, advance and abort (publisher)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetup.server import _crud
from fleetup.server._gate import GroupCounts
from fleetup.server._models import Rollout
from fleetup.server._operations import (
    RolloutReport,
    change_rollout,
    dry_run_rollout,
    explain_rollout,
    report_rollout,
    start_rollout,
)
from fleetup.server._schemas import (
    RolloutAbort,
    RolloutCreate,
    RolloutDevicePublic,
    RolloutDevicesPublic,
    RolloutDryRun,
    RolloutDryRunStage,
    RolloutGate,
    RolloutGroup,
    RolloutPublic,
    RolloutsPublic,
    RolloutStats,
)
from fleetup.server.deps import FleetDep, PublisherDep, SessionDep, ViewerDep
from fleetup.server.routes._params import Offset, RowId

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def _public(row: Rollout, stats: RolloutStats | None = None) -> RolloutPublic:
    return RolloutPublic(
        id=row.id, app=row.app, version=row.version, channel=row.channel,
        stages=list(row.stages), soak_seconds=row.soak_seconds, min_reports=row.min_reports,
        max_failure_rate=row.max_failure_rate, group=dict(row.group_filter or {}),
        stage_index=row.stage_index, stage_percent=_crud.plan_of(row).percent,
        stage_started_at=row.stage_started_at, state=row.state,  # type: ignore[arg-type]
        state_reason=row.state_reason, rollback=row.rollback, created_at=row.created_at,
        created_by=row.created_by, updated_at=row.updated_at, revision=row.revision,
        max_failure_increase=row.max_failure_increase, confidence=row.confidence,
        on_halt=row.on_halt, stats=stats)  # type: ignore[arg-type]


def _gate(report: RolloutReport) -> RolloutGate | None:
    gate, plan = report.gate, report.plan
    if gate is None or plan.max_failure_increase is None:
        return None
    return RolloutGate(
        verdict=gate.verdict.value, treated=_group(gate.treated),
        control=_group(gate.control), difference=gate.difference,
        max_failure_increase=plan.max_failure_increase, confidence=plan.confidence,
        z=gate.z, p_value=gate.p_value, reason=gate.reason)


def _group(counts: GroupCounts) -> RolloutGroup:
    return RolloutGroup(devices=counts.devices, failures=counts.failures,
                        failure_rate=counts.rate)


@router.get("", response_model=RolloutsPublic)
def list_rollouts(session: SessionDep, _: ViewerDep, app: str | None = None,
                  state: str | None = None) -> RolloutsPublic:
    rows = _crud.list_rollouts(session, app=app, state=state)
    return RolloutsPublic(data=[_public(r) for r in rows], count=len(rows))


@router.post("", response_model=RolloutPublic, status_code=201)
def create_rollout(body: RolloutCreate, session: SessionDep, fleet: FleetDep,
                   operator: PublisherDep) -> RolloutPublic:
    row = start_rollout(session, spec=body, actor=operator.actor)
    fleet.changed()
    return _public(row)


@router.post("/dry-run", response_model=RolloutDryRun)
def dry_run(body: RolloutCreate, session: SessionDep, _: ViewerDep) -> RolloutDryRun:
    """How many devices each stage would reach if this rollout started now; changes
    nothing. Cohorts are drawn with the id the rollout would get (``rollout_id``): if
    another rollout starts first, they are drawn anew."""
    result = dry_run_rollout(session, spec=body)
    return RolloutDryRun(
        rollout_id=result.rollout_id, app=body.app, version=body.version, channel=body.channel,
        matching=result.matching, in_scope=result.in_scope,
        will_install=result.stages[-1].will_install if result.stages else 0,
        stages=[RolloutDryRunStage(index=i, percent=s.percent, reached=s.reached, new=s.new,
                                   will_install=s.will_install)
                for i, s in enumerate(result.stages)])


@router.get("/{rollout_id}", response_model=RolloutPublic)
def read_rollout(rollout_id: RowId, session: SessionDep, _: ViewerDep) -> RolloutPublic:
    """The rollout with its current stage's counts and what happens next."""
    row = _crud.get_or_404(session, Rollout, rollout_id, what="rollout")
    report = report_rollout(session, row)
    s = report.stats
    return _public(row, RolloutStats(
        stage_targeted=s.stage_targeted, stage_reports=s.stage_reports,
        stage_failures=s.stage_failures, total_reports=s.total_reports,
        total_failures=s.total_failures, next=report.verdict.reason, gate=_gate(report)))


@router.get("/{rollout_id}/devices", response_model=RolloutDevicesPublic)
def rollout_devices(rollout_id: RowId, session: SessionDep, _: ViewerDep,
                    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                    offset: Offset = 0) -> RolloutDevicesPublic:
    """Per device of the app: is it getting the release, and why (or why not)."""
    row = _crud.get_or_404(session, Rollout, rollout_id, what="rollout")
    rows, count = explain_rollout(session, row, limit=limit, offset=offset)
    return RolloutDevicesPublic(
        data=[RolloutDevicePublic(device_id=r.device_id, version=r.version,
                                  platform=r.platform, channel=r.channel, cohort=r.cohort,
                                  targeted=r.targeted, outcome=r.outcome, reason=r.reason)
              for r in rows], count=count)


@router.post("/{rollout_id}/pause", response_model=RolloutPublic)
def pause(rollout_id: RowId, session: SessionDep, fleet: FleetDep,
          operator: PublisherDep) -> RolloutPublic:
    row = change_rollout(session, rollout_id=rollout_id, action="pause", actor=operator.actor)
    fleet.changed()
    return _public(row)


@router.post("/{rollout_id}/resume", response_model=RolloutPublic)
def resume(rollout_id: RowId, session: SessionDep, fleet: FleetDep,
           operator: PublisherDep) -> RolloutPublic:
    row = change_rollout(session, rollout_id=rollout_id, action="resume",
                         actor=operator.actor)
    fleet.changed()
    return _public(row)


@router.post("/{rollout_id}/advance", response_model=RolloutPublic)
def advance(rollout_id: RowId, session: SessionDep, fleet: FleetDep,
            operator: PublisherDep) -> RolloutPublic:
    """Move an active rollout to its next stage now, without waiting for its soak and
    reports; on its last stage, complete it."""
    row = change_rollout(session, rollout_id=rollout_id, action="advance",
                         actor=operator.actor)
    fleet.changed()
    return _public(row)


@router.post("/{rollout_id}/abort", response_model=RolloutPublic)
def abort(rollout_id: RowId, session: SessionDep, fleet: FleetDep, operator: PublisherDep,
          body: RolloutAbort | None = None) -> RolloutPublic:
    """Stop the rollout; with ``rollback`` devices that took it go back to what they had."""
    row = change_rollout(session, rollout_id=rollout_id, action="abort", actor=operator.actor,
                         abort=body)
    fleet.changed()
    return _public(row)
