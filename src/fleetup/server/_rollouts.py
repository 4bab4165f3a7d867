"""Rollout decisions as pure functions over values: no database, no clock, no IO.

Three questions are answered here, and only here:

- **What should this device do?** (:func:`decide`) — install the release of the rollout
  whose cohort it is in, install what the last completed rollout of its channel left
  as the target, roll back to the version it had (an aborted rollout with rollback), or
  nothing. :func:`eligibility` explains the answer for one rollout, for operators.
- **How is a rollout doing?** (:func:`outcomes`, :func:`stage_stats`) — per device the
  rollout offered its release to, one outcome (:func:`fleetup._protocol.settle` over its
  reports): succeeded if it committed, failed if it reported a failure. Reports of
  devices it never offered the release to do not count, whoever sends them.
- **What next?** (:func:`stage_verdict`) — advance, complete, pause or wait.

State machine (``RolloutState`` values are the persisted strings; :data:`TRANSITIONS`
is the table, :func:`transition` the one place that reads it; operators' actions and the
evaluator's verdicts are both :class:`RolloutEvent`)::

    active ──advance (healthy soak, or operator)──▶ active (next stage)
      │  ▲   ──complete (last stage healthy, or operator advance)──▶ completed
      │  └──resume (operator)──┐                      (stays the channel's target)
      ├──pause (operator) / halt (failure rate > max with enough reports)──▶ paused
      └──abort [--rollback] (operator, from active or paused)─────────▶ aborted
    completed ──abort --rollback / revert (operator)──────────────────▶ aborted

A halt of a rollout started with ``--on-halt rollback`` is followed, by the evaluator,
by an abort with rollback: the same two rows an operator's pause and abort would take.

Rollback orders. An abort with rollback sends back only the devices the rollout
offered its release to and that run it (``Offer.rollback_to``: the version each ran
when offered). The order ends when the device runs another version, and never
outlives the rollout: a newer rollout of the same version whose group holds the device
supersedes it, and the newest word on a version wins — a device sent back from a
version is not offered it again by an older rollout (no install/rollback loop). An
abort is not a health failure: a later rollout of that version offers it again.

Stage gate. Stage ``i`` covers cohorts ``[stages[i-1], stages[i])`` percent. It is
healthy when its soak time has passed since it began and the devices it added sent at
least ``min(min_reports, devices it targets)`` reports, with the failure rate of the
whole rollout at or below the maximum. The rollout pauses itself as soon as the failure
rate exceeds the maximum over at least that many reports (and at least one). After an
operator resumes, failures counted before the resume no longer count towards the rate
(``base_reports``/``base_failures``), and the soak starts again.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from packaging.version import InvalidVersion, Version

from fleetup._cohort import cohort_of
from fleetup._facts import release_target_path
from fleetup._protocol import FAILURE_EVENTS, SUCCESS_EVENTS, CheckinAction, OutcomeKind, settle
from fleetup.errors import UsageError
from fleetup.server._gate import GateResult, GateVerdict

__all__ = [
    "FAILURE_EVENTS",
    "SUCCESS_EVENTS",
    "TRANSITIONS",
    "Action",
    "Decision",
    "DeviceView",
    "Eligibility",
    "Offer",
    "Outcome",
    "RolloutEvent",
    "RolloutPlan",
    "RolloutState",
    "StageReach",
    "StageStats",
    "Verdict",
    "VerdictKind",
    "decide",
    "eligibility",
    "gated_verdict",
    "matches_group",
    "outcomes",
    "parse_stages",
    "sources_of",
    "stage_reach",
    "stage_stats",
    "stage_verdict",
    "transition",
    "verdict_event",
]

Action = CheckinAction


class RolloutState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class RolloutEvent(enum.StrEnum):
    """What changes a rollout's state: an operator's action or the evaluator's verdict."""

    ADVANCE = "advance"    # next stage (operator, or a healthy stage)
    COMPLETE = "complete"  # the last stage is done (operator advance, or healthy)
    PAUSE = "pause"        # operator
    HALT = "halt"          # the failure rate crossed the maximum
    RESUME = "resume"      # operator
    ABORT = "abort"        # operator, with or without rollback


_S, _E = RolloutState, RolloutEvent
TRANSITIONS: Mapping[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (_S.ACTIVE, _E.ADVANCE): _S.ACTIVE,
    (_S.ACTIVE, _E.COMPLETE): _S.COMPLETED,
    (_S.ACTIVE, _E.PAUSE): _S.PAUSED,
    (_S.ACTIVE, _E.HALT): _S.PAUSED,
    (_S.ACTIVE, _E.ABORT): _S.ABORTED,
    (_S.PAUSED, _E.RESUME): _S.ACTIVE,
    (_S.PAUSED, _E.ABORT): _S.ABORTED,
    # A revert: a bad release found after 100 % goes back (abort with rollback).
    (_S.COMPLETED, _E.ABORT): _S.ABORTED,
}


def transition(state: RolloutState, event: RolloutEvent) -> RolloutState | None:
    """The state ``event`` leads to from ``state``; ``None`` if the table forbids it."""
    return TRANSITIONS.get((state, event))


def sources_of(event: RolloutEvent) -> list[RolloutState]:
    """The states from which ``event`` is allowed (for ``UPDATE ... WHERE state IN``)."""
    return [state for state, e in TRANSITIONS if e is event]


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class VerdictKind(enum.StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    COMPLETE = "complete"
    PAUSE = "pause"


@functools.lru_cache(maxsize=4096)
def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def parse_stages(text: str) -> tuple[float, ...]:
    """Parse ``"1,10,50,100"``: increasing percents in (0, 100], the last one 100.

    Raises:
        UsageError: malformed, not increasing, out of range, or not ending at 100.
    """
    try:
        stages = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"bad stages {text!r}: use increasing percents, e.g. 1,10,50,100"
                         ) from None
    check_stages(stages)
    return stages


def check_stages(stages: Sequence[float]) -> None:
    """Raises UsageError unless ``stages`` grow strictly within (0, 100] and end at 100."""
    if not stages:
        raise UsageError("a rollout needs at least one stage")
    previous = 0.0
    for percent in stages:
        if not previous < percent <= 100:
            raise UsageError(f"stages must grow strictly within (0, 100]: {list(stages)}")
        previous = percent
    if stages[-1] != 100:
        raise UsageError(f"the last stage must be 100 (all devices): {list(stages)}")


def matches_group(tags: Mapping[str, str], group: Mapping[str, str]) -> bool:
    """Whether a device with ``tags`` is in the group ``group`` (every tag equal)."""
    return all(tags.get(tag) == value for tag, value in group.items())


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """A rollout as the decisions see it."""

    id: int
    app: str
    version: str
    channel: str
    stages: tuple[float, ...]
    stage_index: int
    stage_started_at: datetime
    soak: timedelta
    min_reports: int
    max_failure_rate: float
    state: RolloutState
    group: Mapping[str, str] = field(default_factory=dict)
    rollback: bool = False
    base_reports: int = 0
    base_failures: int = 0
    # The control-group gate (``_gate``): off when ``max_failure_increase`` is None.
    max_failure_increase: float | None = None
    confidence: float = 0.95
    # A halt is followed by an abort with rollback (``--on-halt rollback``).
    on_halt_rollback: bool = False
    created_at: datetime | None = None

    @property
    def salt(self) -> str:
        """The cohort salt: the rollout id, so each rollout draws its own cohorts."""
        return str(self.id)

    @property
    def percent(self) -> float:
        """Share of matching devices the current stage reaches (100 once completed)."""
        if self.state == RolloutState.COMPLETED:
            return 100.0
        return self.stages[self.stage_index]

    @property
    def previous_percent(self) -> float:
        return self.stages[self.stage_index - 1] if self.stage_index > 0 else 0.0

    @property
    def is_last_stage(self) -> bool:
        return self.stage_index == len(self.stages) - 1


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What a check-in (and the device's record) says about a device."""

    id: str
    app: str
    platform: str
    channel: str
    version: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    failed: frozenset[str] = frozenset()
    previous_version: str | None = None
    # The server-made key cohorts hash (``Device.cohort_key``); the id if there is none.
    cohort_key: str | None = None
    # An operator's word on this device alone (``fleetup device rollback|pin``).
    rollback_to: str | None = None
    pinned: str | None = None
    rolled_back_from: str | None = None  # withdrawn from it by a one-device rollback

    @property
    def cohort_source(self) -> str:
        return self.cohort_key or self.id


@dataclass(frozen=True, slots=True)
class Offer:
    """A rollout with what the server knows around it.

    ``platforms``: where its release exists and is not yanked. ``failed_devices``:
    devices that reported a health failure of its version. ``rollback_to``: the devices
    it offered its release to, each with the version it ran then (where an abort with
    rollback sends it back).
    """

    rollout: RolloutPlan
    platforms: frozenset[str]
    failed_devices: frozenset[str] = frozenset()
    rollback_to: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a check-in (``version``/``target`` only for install and rollback)."""

    action: Action
    reason: str
    version: str | None = None
    target: str | None = None
    rollout_id: int | None = None


@dataclass(frozen=True, slots=True)
class Eligibility:
    """Whether one rollout offers its release to one device, and why (or why not)."""

    targeted: bool
    reason: str
    cohort: float


def _newer(candidate: str, installed: str | None) -> bool:
    if installed is None:
        return True
    new, old = _version(candidate), _version(installed)
    if new is None or old is None:
        return candidate != installed
    return new > old


def eligibility(device: DeviceView, offer: Offer) -> Eligibility:
    """Whether ``offer``'s rollout reaches ``device`` at its current stage, and why.

    The rollout's state is not considered here: a device in the cohort of a paused
    rollout is "targeted" (it will get the release once the rollout resumes).
    """
    r = offer.rollout
    cohort = cohort_of(device.cohort_source, r.salt)
    if device.app != r.app:
        return Eligibility(False, f"app {device.app} is not the rollout's app {r.app}", cohort)
    if device.channel != r.channel:
        return Eligibility(False, f"on channel {device.channel}, the rollout is for "
                                  f"{r.channel}", cohort)
    if not matches_group(device.tags, r.group):
        wanted = ",".join(f"{k}={v}" for k, v in sorted(r.group.items()))
        return Eligibility(False, f"tags do not match the group {wanted}", cohort)
    if device.platform not in offer.platforms:
        return Eligibility(False, f"no release {r.version} for platform {device.platform}",
                           cohort)
    if r.version in device.failed or device.id in offer.failed_devices:
        return Eligibility(False, f"reported a health failure of {r.version}", cohort)
    if not _newer(r.version, device.version):
        return Eligibility(False, f"already on {device.version}", cohort)
    if cohort >= r.percent:
        return Eligibility(False, f"cohort {cohort:.2f} is not below the stage's "
                                  f"{r.percent:g}%", cohort)
    return Eligibility(True, f"cohort {cohort:.2f} is below the stage's {r.percent:g}%: "
                             f"offered {r.version}", cohort)


def _rollback(device: DeviceView, offer: Offer) -> Decision | None:
    """The rollback order of an aborted rollout for ``device``, if it took the release."""
    r = offer.rollout
    target = offer.rollback_to.get(device.id)
    if device.version != r.version or not target or target == device.version:
        return None
    return Decision(Action.ROLLBACK, f"rollout {r.id} was aborted with rollback",
                    target, release_target_path(r.app, device.platform, target), r.id)


def _in_scope(device: DeviceView, r: RolloutPlan) -> bool:
    return (device.app == r.app and device.channel == r.channel
            and matches_group(device.tags, r.group))


def _operator_order(device: DeviceView) -> Decision | None:
    """An order for this device alone, which no rollout overrides: go back to a kept
    version (until it runs it), or run the pinned version and nothing else."""
    path = functools.partial(release_target_path, device.app, device.platform)
    if device.rollback_to and device.rollback_to != device.version:
        return Decision(Action.ROLLBACK, f"an operator rolled this device back to "
                        f"{device.rollback_to}", device.rollback_to, path(device.rollback_to))
    if device.pinned is None:
        return None
    if device.pinned != device.version:
        return Decision(Action.INSTALL, f"pinned to {device.pinned}", device.pinned,
                        path(device.pinned))
    return Decision(Action.NONE, f"pinned to {device.pinned}: left out of rollouts")


def decide(device: DeviceView, offers: Sequence[Offer]) -> Decision:
    """What ``device`` should do, given every rollout of its app (any order).

    An operator's order for the device alone comes first (:func:`_operator_order`): a
    pinned device is left out of every rollout.

    Newest first, the first rollout of the device's channel with something to say wins;
    a device outside the current stage (or under a paused rollout) gets what an older
    completed rollout made the channel's target. The newest word on a version wins: a
    rollout in whose scope the device is re-affirms its version (an older abort's
    rollback order no longer applies), and a device an aborted rollout sent back from
    a version is not offered that version by an older rollout.
    """
    if (order := _operator_order(device)) is not None:
        return order
    mine = sorted((o for o in offers if o.rollout.app == device.app
                   and o.rollout.channel == device.channel),
                  key=lambda o: o.rollout.id, reverse=True)
    affirmed: set[str] = set()
    withdrawn: dict[str, int] = {}
    first_reason = ""
    for offer in mine:
        r = offer.rollout
        if r.state == RolloutState.ABORTED:
            if r.version in affirmed or device.id not in offer.rollback_to:
                continue
            if r.rollback and (decision := _rollback(device, offer)):
                return decision
            withdrawn.setdefault(r.version, r.id)
            first_reason = first_reason or (f"rollout {r.id} was aborted: {r.version} "
                                            "withdrawn from this device")
            continue
        if r.version == device.rolled_back_from:
            first_reason = first_reason or (f"an operator rolled this device back from "
                                            f"{r.version}")
            continue
        if r.version in withdrawn:
            first_reason = first_reason or (f"{r.version} was withdrawn from this device by "
                                            f"rollout {withdrawn[r.version]}")
            continue
        if _in_scope(device, r):
            affirmed.add(r.version)
        seen = eligibility(device, offer)
        if seen.targeted and r.state == RolloutState.PAUSED:
            first_reason = first_reason or f"rollout {r.id} is paused"
            continue
        if seen.targeted:
            return Decision(Action.INSTALL, f"rollout {r.id}: {seen.reason}", r.version,
                            release_target_path(r.app, device.platform, r.version), r.id)
        first_reason = first_reason or f"rollout {r.id}: {seen.reason}"
    return Decision(Action.NONE, first_reason or f"no rollout for {device.app} on channel "
                                                 f"{device.channel}")


# -- rollout health -------------------------------------------------------------------


def outcomes(events: Iterable[tuple[str, str]]) -> dict[str, Outcome]:
    """Per device, from its ``(device_id, event type)`` reports on one rollout (only
    devices the rollout offered its release to: the caller's query sees to that).

    One outcome per device however many reports it sends (:func:`settle`): a device
    that committed succeeded, one that only failed failed, one that only rolled back
    (an operator's order) is no report at all.
    """
    kinds: dict[str, list[str]] = {}
    for device_id, kind in events:
        kinds.setdefault(device_id, []).append(kind)
    result: dict[str, Outcome] = {}
    for device_id, reported in kinds.items():
        settled = settle(reported)
        if settled is OutcomeKind.SUCCESS:
            result[device_id] = Outcome.SUCCEEDED
        elif settled is OutcomeKind.FAILURE:
            result[device_id] = Outcome.FAILED
    return result


@dataclass(frozen=True, slots=True)
class StageStats:
    """Reports of the current stage's own devices, and of the whole rollout so far."""

    stage_targeted: int
    stage_reports: int
    stage_failures: int
    total_reports: int
    total_failures: int


def stage_stats(plan: RolloutPlan, scope: Iterable[float],
                results: Mapping[str, Outcome], offered_at: Mapping[str, int]
                ) -> StageStats:
    """Count devices and reports for ``plan``'s current stage.

    ``scope``: the cohorts (``cohort_of(cohort key, plan.salt)``) of the registered
    devices the rollout can reach (its app, channel, group and platforms) — cohorts
    rather than ids, so a caller can compute them once per rollout; ``results``:
    per-device outcomes on this rollout; ``offered_at``: the stage index at which the
    rollout offered its release to each device — a stage's evidence is the reports of
    the devices it offered the release to.
    """
    low, high = plan.previous_percent, plan.percent
    targeted = sum(1 for cohort in scope if low <= cohort < high)
    stage_reports = stage_failures = total_reports = total_failures = 0
    for device_id, outcome in results.items():
        failed = outcome == Outcome.FAILED
        total_reports += 1
        total_failures += failed
        if offered_at.get(device_id) == plan.stage_index:
            stage_reports += 1
            stage_failures += failed
    return StageStats(targeted, stage_reports, stage_failures, total_reports, total_failures)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str


def verdict_event(verdict: Verdict) -> RolloutEvent | None:
    """The lifecycle event a verdict is (``None``: wait)."""
    return {VerdictKind.ADVANCE: RolloutEvent.ADVANCE, VerdictKind.COMPLETE:
            RolloutEvent.COMPLETE, VerdictKind.PAUSE: RolloutEvent.HALT}.get(verdict.kind)


def stage_verdict(plan: RolloutPlan, stats: StageStats, now: datetime) -> Verdict:
    """Advance, complete, pause or wait (see the module docstring for the rule)."""
    if plan.state != RolloutState.ACTIVE:
        return Verdict(VerdictKind.WAIT, f"rollout is {plan.state}")
    required = min(plan.min_reports, stats.stage_targeted)
    reports = stats.total_reports - plan.base_reports
    failures = stats.total_failures - plan.base_failures
    rate = failures / reports if reports > 0 else 0.0
    if reports >= max(required, 1) and rate > plan.max_failure_rate:
        return Verdict(VerdictKind.PAUSE,
                       f"failure rate {rate:.1%} is over {plan.max_failure_rate:.1%} "
                       f"({failures} of {reports} reports)")
    soak_end = plan.stage_started_at + plan.soak
    if now < soak_end:
        return Verdict(VerdictKind.WAIT, f"soaking until {soak_end.isoformat()}")
    if stats.stage_reports < required:
        return Verdict(VerdictKind.WAIT, f"waiting for reports: {stats.stage_reports} of "
                                         f"{required} from this stage")
    if rate > plan.max_failure_rate:
        return Verdict(VerdictKind.WAIT, f"failure rate {rate:.1%} is over the maximum; "
                                         "waiting for more reports")
    if plan.is_last_stage:
        return Verdict(VerdictKind.COMPLETE, f"stage {plan.percent:g}% healthy: completed")
    return Verdict(VerdictKind.ADVANCE, f"stage {plan.percent:g}% healthy: advancing to "
                                        f"{plan.stages[plan.stage_index + 1]:g}%")


def gated_verdict(plan: RolloutPlan, verdict: Verdict, gate: GateResult | None) -> Verdict:
    """The stage verdict, overridden by a halt of the control-group gate (``_gate``).

    The gate only halts: it does not hold a healthy stage back while its groups are
    still small (a control group shrinks to nothing as a rollout nears 100 %).
    """
    if (gate is None or gate.verdict is not GateVerdict.HALT
            or plan.state != RolloutState.ACTIVE or verdict.kind is VerdictKind.PAUSE):
        return verdict
    return Verdict(VerdictKind.PAUSE, gate.reason)


# -- dry run --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageReach:
    """What one stage of a rollout not yet started would reach (counts cumulative)."""

    percent: float
    reached: int       # devices in scope with a cohort below ``percent``
    new: int           # of those, the ones this stage adds
    will_install: int  # of those reached, the ones :func:`eligibility` would offer it


def stage_reach(offer: Offer, devices: Iterable[DeviceView]) -> tuple[int, int, list[StageReach]]:
    """Dry run: per stage of ``offer``'s rollout, how many of ``devices`` it reaches.

    Uses the same cohorts and :func:`eligibility` as the check-ins will, so the counts
    are exact for the rollout id in ``offer`` (cohorts are salted with it). Returns
    (devices matching its app, channel and group; of those, devices in scope — on a
    platform the release exists for; the stages).
    """
    r = offer.rollout
    last = replace(r, stage_index=len(r.stages) - 1, state=RolloutState.ACTIVE)
    final = Offer(last, offer.platforms, offer.failed_devices, offer.rollback_to)
    matching = 0
    scope: list[float] = []
    offered: list[float] = []
    for device in devices:
        if (device.app != r.app or device.channel != r.channel
                or not matches_group(device.tags, r.group)):
            continue
        matching += 1
        if device.platform not in offer.platforms:
            continue
        seen = eligibility(device, final)
        scope.append(seen.cohort)
        if seen.targeted:
            offered.append(seen.cohort)
    stages, before = [], 0
    for percent in r.stages:
        reached = sum(1 for cohort in scope if cohort < percent)
        stages.append(StageReach(percent, reached, reached - before,
                                 sum(1 for cohort in offered if cohort < percent)))
        before = reached
    return matching, len(scope), stages
