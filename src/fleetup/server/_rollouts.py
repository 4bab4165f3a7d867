"""Rollout decisions as pure functions over values: no database, no clock, no IO.

Three questions are answered here, and only here:

- **What should this device do?** (:func:`decide`) — install the release of the rollout
  whose cohort it is in, install what the last completed rollout of its channel left
  as the target, roll back to the version it had (an aborted rollout with rollback), or
  nothing. :func:`eligibility` explains the answer for one rollout, for operators.
- **How is a rollout doing?** (:func:`outcomes`, :func:`stage_stats`) — per device, one
  outcome: failed if it reported ``health-failed``, ``rolled-back`` or ``error`` for the
  rollout, succeeded if it reported ``committed``.
- **What next?** (:func:`stage_verdict`) — advance, complete, pause or wait.

State machine (``RolloutState`` values are the persisted strings)::

    active ──advance (healthy soak)──▶ active (next stage) ──last stage──▶ completed
      │  ▲                                                             (stays the channel's
      │  └──resume (operator)──┐                                        target for joiners)
      ├──pause (operator, or failure rate > max with enough reports)──▶ paused
      └──abort [--rollback] (operator, from active or paused)─────────▶ aborted

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
from fleetup.errors import UsageError

__all__ = [
    "FAILURE_EVENTS",
    "SUCCESS_EVENTS",
    "Action",
    "Decision",
    "DeviceView",
    "Eligibility",
    "Offer",
    "Outcome",
    "RolloutPlan",
    "RolloutState",
    "StageReach",
    "StageStats",
    "Verdict",
    "VerdictKind",
    "decide",
    "eligibility",
    "matches_group",
    "outcomes",
    "parse_stages",
    "stage_reach",
    "stage_stats",
    "stage_verdict",
]

FAILURE_EVENTS = frozenset({"health-failed", "rolled-back", "error"})
SUCCESS_EVENTS = frozenset({"committed"})


class RolloutState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class Action(enum.StrEnum):
    NONE = "none"
    INSTALL = "install"
    ROLLBACK = "rollback"


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


@dataclass(frozen=True, slots=True)
class Offer:
    """A rollout with what the server knows around it.

    ``platforms``: where its release exists and is not yanked. ``failed_devices``:
    devices that reported a health failure of its version. ``rollback_to``: for
    devices that committed it, the version they had before.
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
    cohort = cohort_of(device.id, r.salt)
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
    r = offer.rollout
    if device.version != r.version:
        return None
    target = offer.rollback_to.get(device.id)
    if target is None and cohort_of(device.id, r.salt) < r.percent:
        target = device.previous_version
    if target is None or target == device.version:
        return None
    return Decision(Action.ROLLBACK, f"rollout {r.id} was aborted with rollback",
                    target, release_target_path(r.app, device.platform, target), r.id)


def decide(device: DeviceView, offers: Sequence[Offer]) -> Decision:
    """What ``device`` should do, given every rollout of its app (any order).

    The newest rollout of the device's channel that reaches it wins; a device outside
    the current stage (or under a paused rollout) gets what an older completed rollout
    made the channel's target. An aborted rollout with rollback sends the devices that
    took its release back to the version they had before.
    """
    mine = sorted((o for o in offers if o.rollout.app == device.app
                   and o.rollout.channel == device.channel),
                  key=lambda o: o.rollout.id, reverse=True)
    first_reason = ""
    for offer in mine:
        r = offer.rollout
        if r.state == RolloutState.ABORTED:
            if r.rollback and (decision := _rollback(device, offer)):
                return decision
            first_reason = first_reason or f"rollout {r.id} was aborted"
            continue
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
    """Per device, from its ``(device_id, event type)`` reports on one rollout."""
    result: dict[str, Outcome] = {}
    for device_id, kind in events:
        if kind in FAILURE_EVENTS:
            result[device_id] = Outcome.FAILED
        elif kind in SUCCESS_EVENTS:
            result.setdefault(device_id, Outcome.SUCCEEDED)
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
                results: Mapping[str, Outcome]) -> StageStats:
    """Count devices and reports for ``plan``'s current stage.

    ``scope``: the cohorts (``cohort_of(id, plan.salt)``) of the registered devices the
    rollout can reach (its app, channel, group and platforms) — cohorts rather than
    ids, so a caller can compute them once per rollout; ``results``: per-device
    outcomes on this rollout.
    """
    low, high = plan.previous_percent, plan.percent
    targeted = sum(1 for cohort in scope if low <= cohort < high)
    stage_reports = stage_failures = total_reports = total_failures = 0
    for device_id, outcome in results.items():
        failed = outcome == Outcome.FAILED
        total_reports += 1
        total_failures += failed
        if low <= cohort_of(device_id, plan.salt) < high:
            stage_reports += 1
            stage_failures += failed
    return StageStats(targeted, stage_reports, stage_failures, total_reports, total_failures)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str


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
