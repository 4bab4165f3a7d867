"""What operators do, between the thin routes and the queries: checks, then changes.

Each function validates what it is given, changes the database through ``_crud``,
writes the audit entry in the same transaction, and commits. Refusals are
:class:`~fleetup.errors.ServerAPIError` with a stable ``code``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from fleetup._cohort import cohort_of
from fleetup.errors import ServerAPIError, UsageError
from fleetup.server import _crud, _notify
from fleetup.server._gate import GateResult, control_gate, group_counts
from fleetup.server._models import Release, Rollout, utcnow
from fleetup.server._rollouts import (
    DeviceView,
    Offer,
    Outcome,
    RolloutEvent,
    RolloutPlan,
    RolloutState,
    StageReach,
    StageStats,
    Verdict,
    check_stages,
    eligibility,
    gated_verdict,
    outcomes,
    sources_of,
    stage_reach,
    stage_stats,
    stage_verdict,
    transition,
    verdict_event,
)
from fleetup.server._schemas import RolloutAbort, RolloutCreate
from fleetup.server._store import PushOutcome, ReleaseStore

__all__ = ["DryRun", "RolloutReport", "apply_rollout_event", "assess_rollout",
           "change_rollout", "dry_run_rollout", "evaluate_rollout", "explain_rollout",
           "push_release", "report_rollout", "start_rollout", "sync_releases"]


# -- releases -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upload:
    """One pushed file: its target path and its bytes (a readable binary stream)."""

    path: str
    stream: BinaryIO


def push_release(session: Session, store: ReleaseStore, *, targets: bytes,
                 roots: Sequence[bytes], uploads: Sequence[Upload], actor: str,
                 release: tuple[str, str] | None = None
                 ) -> tuple[PushOutcome, list[Release]]:
    """Publish a publisher's signed targets with its files, and record its releases
    whose files are all stored (``release``: see :meth:`ReleaseStore.accept_push`).

    Raises:
        TrustError, RollbackAttackError, IntegrityError, RepositoryError,
        SigningKeyError, MetadataExpiredError, StorageError: see
        :meth:`ReleaseStore.accept_push`; nothing was published.
    """
    with _spooled(store, uploads) as files:
        outcome = store.accept_push(targets, roots, files, release=release)
    known = {(r.app, r.version) for r in _crud.list_releases(session)}
    rows = _crud.record_releases(session, releases=outcome.releases,
                                 targets_version=outcome.targets_version)
    # Rows are written even when the store had everything: a push whose store commit
    # went through but whose database commit did not is mended by being retried.
    if outcome.already:
        session.commit()
        return outcome, rows
    _crud.add_audit(session, actor=actor, action="release.push",
                    target=f"targets:{outcome.targets_version}",
                    details={"stored_files": outcome.stored_files,
                             "releases": sorted({f"{r.facts.app} {r.facts.version}"
                                                 for r in outcome.releases})})
    _notify.enqueue(session, [_notify.release_pushed(app, version, outcome.targets_version)
                              for app, version in sorted({(r.facts.app, r.facts.version)
                                                          for r in outcome.releases} - known)],
                    now=utcnow())
    session.commit()
    return outcome, rows


def sync_releases(session: Session, store: ReleaseStore) -> int:
    """Record the releases of the store's current targets (after ``admin repo init``,
    which writes files only). Returns how many release rows were written; commits.

    Raises:
        RepositoryError: the store's metadata is missing or corrupt.
    """
    if not store.exists():
        return 0
    version, releases = store.current_releases()
    known = _crud.list_releases(session)
    if known and max(r.targets_version for r in known) >= version:
        return 0
    rows = _crud.record_releases(session, releases=releases, targets_version=version)
    _crud.add_audit(session, actor="system", action="release.sync",
                    target=f"targets:{version}", details={"releases": len(rows)})
    session.commit()
    return len(rows)


@contextlib.contextmanager
def _spooled(store: ReleaseStore, uploads: Sequence[Upload]) -> Iterator[dict[str, Path]]:
    # Next to the repository, so placing a file is a hard link, not a second copy.
    staging = store.layout.root / ".uploads"
    staging.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=staging))
    try:
        files: dict[str, Path] = {}
        for number, upload in enumerate(uploads):
            path = directory / f"{number}.bin"
            with path.open("wb") as out:
                shutil.copyfileobj(upload.stream, out, 1 << 20)
            files[upload.path] = path
        yield files
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- rollouts -------------------------------------------------------------------------


def start_rollout(session: Session, *, spec: RolloutCreate, actor: str) -> Rollout:
    """Create an active rollout at its first stage.

    Raises:
        ServerAPIError: 422 bad stages, unknown channel, or no such release (or only
            yanked ones); 409 the release is not signed for the channel, or another
            rollout of that app and channel is unfinished.
    """
    _check_spec(session, spec)
    _check_signed_channel(session, spec)
    try:
        row = _crud.create_rollout(
            session, app=spec.app, version=spec.version, channel=spec.channel,
            stages=spec.stages, soak_seconds=spec.soak_seconds, min_reports=spec.min_reports,
            max_failure_rate=spec.max_failure_rate, group=spec.group, created_by=actor,
            max_failure_increase=spec.max_failure_increase, confidence=spec.confidence,
            on_halt=spec.on_halt)
    except DBIntegrityError as e:
        session.rollback()
        raise ServerAPIError(f"{spec.app} already has an active or paused rollout on "
                             f"{spec.channel}: finish, abort or wait for it first",
                             "rollout_conflict", 409) from e
    _crud.add_audit(session, actor=actor, action="rollout.start", target=f"rollout:{row.id}",
                    details=spec.model_dump())
    session.commit()
    return row


def _check_spec(session: Session, spec: RolloutCreate) -> frozenset[str]:
    """Refuse a rollout that cannot start; returns the release's platforms."""
    try:
        check_stages(spec.stages)
    except UsageError as e:
        raise ServerAPIError(str(e), "invalid_stages", 422) from e
    if spec.channel not in {c.name for c in _crud.list_channels(session)}:
        raise ServerAPIError(f"no channel {spec.channel!r}: create it first",
                             "unknown_channel", 422)
    platforms = _crud.release_platforms(session, app=spec.app, version=spec.version)
    if not platforms:
        raise ServerAPIError(f"{spec.app} {spec.version} has not been pushed (or is yanked)",
                             "unknown_release", 422)
    return frozenset(platforms)


def _check_signed_channel(session: Session, spec: RolloutCreate) -> None:
    """Devices refuse a release on a channel it is not signed for: do not offer it there.

    Raises:
        ServerAPIError: 409 ``channel_not_signed``.
    """
    signed = {c for r in _crud.list_releases(session, app=spec.app, version=spec.version)
              if not r.yanked for c in r.channels}
    if spec.channel not in signed:
        raise ServerAPIError(f"{spec.app} {spec.version} is signed for "
                             f"{', '.join(sorted(signed)) or 'no channel'}, not "
                             f"{spec.channel}: publish it for {spec.channel} first",
                             "channel_not_signed", 409)


@dataclass(frozen=True, slots=True)
class DryRun:
    rollout_id: int
    matching: int
    in_scope: int
    stages: list[StageReach]


def dry_run_rollout(session: Session, *, spec: RolloutCreate) -> DryRun:
    """How many devices each stage of ``spec`` would reach if it started now, with
    the cohorts of the id it would get (see :func:`_rollouts.stage_reach`).

    Raises:
        ServerAPIError: 422 as :func:`start_rollout` would refuse it.
    """
    platforms = _check_spec(session, spec)
    now = utcnow()
    plan = RolloutPlan(
        id=_crud.next_rollout_id(session), app=spec.app, version=spec.version,
        channel=spec.channel, stages=tuple(spec.stages), stage_index=0, stage_started_at=now,
        soak=timedelta(seconds=spec.soak_seconds), min_reports=spec.min_reports,
        max_failure_rate=spec.max_failure_rate, state=RolloutState.ACTIVE,
        group=dict(spec.group))
    failed = _crud.devices_that_failed(session, app=spec.app, version=spec.version)
    devices = [DeviceView(d.id, d.app, d.platform, d.channel, d.version, d.tags or {},
                          frozenset(), d.previous_version, d.cohort_key)
               for d in _crud.rollout_devices(session, plan=plan)]
    matching, in_scope, stages = stage_reach(Offer(plan, platforms, failed), devices)
    return DryRun(plan.id, matching, in_scope, stages)


_AUDIT = {RolloutEvent.HALT: "pause"}


def apply_rollout_event(session: Session, *, rollout_id: int, seen_revision: int,
                        event: RolloutEvent, actor: str, reason: str,
                        audit: str | None = None, **values: Any) -> bool:
    """Apply ``event`` to a rollout as :data:`_rollouts.TRANSITIONS` says: the one
    place a rollout's state is written (operators' actions and the evaluator's verdicts
    alike). Applied only if the rollout is still at ``seen_revision`` and in a state
    the event leaves from; commits with its audit entry (``audit``: its action, by
    default ``rollout.<event>``, a halt audited as the pause it is). Returns whether it
    applied."""
    states = sources_of(event)
    target = transition(states[0], event) if states else None
    if target is None:
        return False
    if target is not states[0]:
        values["state"] = target.value
    return _crud.update_rollout(session, rollout_id=rollout_id, seen_revision=seen_revision,
                                from_states=states, actor=actor,
                                action=audit or f"rollout.{_AUDIT.get(event, event)}",
                                state_reason=reason,
                                **values)


def change_rollout(session: Session, *, rollout_id: int, action: str, actor: str,
                   abort: RolloutAbort | None = None) -> Rollout:
    """Pause, resume, advance or abort (optionally with rollback) a rollout; a
    completed one can be reverted (aborted with rollback).

    Resuming restarts the stage's soak and counts failures from then on. Advancing
    moves an active rollout to its next stage now, without waiting for the soak and
    the reports (on its last stage: completes it).

    Raises:
        ServerAPIError: 404 no such rollout; 409 not in a state that allows it.
    """
    row = _crud.get_or_404(session, Rollout, rollout_id, what="rollout")
    plan = _crud.plan_of(row)
    event = RolloutEvent(action)
    if event is RolloutEvent.ADVANCE and plan.is_last_stage:
        event = RolloutEvent.COMPLETE
    if transition(plan.state, event) is None:
        raise ServerAPIError(f"rollout {rollout_id} is {row.state}: cannot {action} it",
                             "invalid_state", 409)
    if plan.state is RolloutState.COMPLETED and not (abort and abort.rollback):
        # A completed rollout is the channel's target: stopping it means going back.
        raise ServerAPIError(f"rollout {rollout_id} is completed: revert it (abort with "
                             "rollback) to send its devices back", "invalid_state", 409)
    reason, values = _operator_change(session, row, plan, event, actor, abort)
    revision = row.revision
    session.rollback()
    if not apply_rollout_event(session, rollout_id=rollout_id, seen_revision=revision,
                               event=event, actor=actor, reason=reason,
                               audit=f"rollout.{action}", **values):
        raise ServerAPIError(f"rollout {rollout_id} changed meanwhile: look and try again",
                             "conflict", 409)
    fresh = session.get(Rollout, rollout_id)
    assert fresh is not None
    return fresh


def _operator_change(session: Session, row: Rollout, plan: RolloutPlan, event: RolloutEvent,
                     actor: str, abort: RolloutAbort | None) -> tuple[str, dict[str, Any]]:
    """The audit reason and the columns an operator's ``event`` sets beside the state."""
    if event is RolloutEvent.RESUME:
        report = report_rollout(session, row)
        return f"resumed by {actor}", {
            "stage_started_at": utcnow(), "base_reports": report.stats.total_reports,
            "base_failures": report.stats.total_failures}
    if event is RolloutEvent.ADVANCE:
        following = plan.stages[plan.stage_index + 1]
        return f"advanced to {following:g}% by {actor}", {
            "stage_index": plan.stage_index + 1, "stage_started_at": utcnow()}
    if event is RolloutEvent.ABORT:
        abort = abort or RolloutAbort()
        return abort.reason or (f"aborted by {actor}" + (
            " with rollback" if abort.rollback else "")), {"rollback": abort.rollback}
    return {RolloutEvent.PAUSE: f"paused by {actor}",
            RolloutEvent.COMPLETE: f"completed by {actor}"}[event], {}


@dataclass(frozen=True, slots=True)
class RolloutReport:
    plan: RolloutPlan
    platforms: frozenset[str]
    results: dict[str, Outcome]
    stats: StageStats
    verdict: Verdict
    offered_at: dict[str, int]
    gate: GateResult | None = None


def report_rollout(session: Session, row: Rollout) -> RolloutReport:
    """The rollout's stage counts and what the next evaluation would do."""
    plan = _crud.plan_of(row)
    platforms = frozenset(_crud.release_platforms(session, app=plan.app, version=plan.version))
    scope = _crud.rollout_scope(session, plan=plan, platforms=platforms)
    return assess_rollout(session, plan, [cohort_of(k, plan.salt) for k in scope], utcnow(),
                          platforms)


def assess_rollout(session: Session, plan: RolloutPlan, scope: Sequence[float],
                   now: datetime, platforms: frozenset[str] = frozenset()) -> RolloutReport:
    """Read a rollout's evidence and judge it (``scope``: the cohorts it can reach):
    the one judgement the evaluation tick, the report that may cross a threshold and
    the status page all share."""
    results = outcomes(_crud.rollout_outcome_events(session, rollout_id=plan.id))
    offered_at = _crud.rollout_offered_stages(session, rollout_id=plan.id)
    stats = stage_stats(plan, scope, results, offered_at)
    gate = None
    if plan.max_failure_increase is not None:
        treated, control = group_counts(_crud.health_reports(session, plan=plan),
                                        plan.version)
        gate = control_gate(treated, control, max_increase=plan.max_failure_increase,
                            confidence=plan.confidence, min_each=plan.min_reports)
    verdict = gated_verdict(plan, stage_verdict(plan, stats, now), gate)
    return RolloutReport(plan, platforms, results, stats, verdict, offered_at, gate)


def evaluate_rollout(session: Session, plan: RolloutPlan, seen_revision: int,
                     scope: Sequence[float], now: datetime) -> bool:
    """Judge one rollout and apply the verdict (as the system); returns whether it
    changed. With ``--on-halt rollback`` a halt is followed by an abort with rollback,
    through the same transition table as an operator's."""
    report = assess_rollout(session, plan, scope, now)
    event = verdict_event(report.verdict)
    # End the read transaction before the write. The change applies only if the
    # rollout is still at the revision this verdict was made from.
    session.rollback()
    if event is None:
        return False
    values: dict[str, Any] = {}
    if event is RolloutEvent.ADVANCE:
        values = {"stage_index": plan.stage_index + 1, "stage_started_at": now}
    reason = report.verdict.reason
    if not apply_rollout_event(session, rollout_id=plan.id, seen_revision=seen_revision,
                               event=event, actor="system", reason=reason, **values):
        return False
    if event is RolloutEvent.HALT and plan.on_halt_rollback:
        apply_rollout_event(session, rollout_id=plan.id, seen_revision=seen_revision + 1,
                            event=RolloutEvent.ABORT, actor="system", rollback=True,
                            reason=f"halted and rolled back (--on-halt rollback): {reason}")
    return True


@dataclass(frozen=True, slots=True)
class DeviceExplanation:
    device_id: str
    version: str | None
    platform: str
    channel: str
    cohort: float
    targeted: bool
    outcome: str | None
    reason: str


def explain_rollout(session: Session, row: Rollout, *, limit: int, offset: int
                    ) -> tuple[list[DeviceExplanation], int]:
    """Per device of the rollout's app: is it getting the release, and why (or not)."""
    report = report_rollout(session, row)
    offer = Offer(report.plan, report.platforms,
                  frozenset(d for d, o in report.results.items() if o == Outcome.FAILED))
    devices = _crud.rollout_devices(session, plan=report.plan)
    rows = []
    for device in devices[offset:offset + limit]:
        view = DeviceView(device.id, device.app, device.platform, device.channel,
                          device.version, device.tags or {}, frozenset(),
                          device.previous_version, device.cohort_key)
        seen = eligibility(view, offer)
        outcome = report.results.get(device.id)
        reason = seen.reason
        if outcome is not None:
            reason = f"{outcome.value} ({seen.reason})"
        elif seen.targeted and report.plan.state != RolloutState.ACTIVE:
            reason = f"in the cohort, but the rollout is {report.plan.state}"
        rows.append(DeviceExplanation(device.id, device.version, device.platform,
                                      device.channel, round(seen.cohort, 4),
                                      seen.targeted, outcome.value if outcome else None,
                                      reason))
    return rows, len(devices)
