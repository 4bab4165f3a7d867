"""The API's wire model (pydantic v2): the fleet protocol and the operator API.

Operator resources follow the ``XBase / XCreate / XUpdate / XPublic / XsPublic`` ladder.
Device messages are named after the protocol step (``CheckinRequest``...). Incoming
messages ignore unknown fields, so the protocol can grow by adding fields without
breaking older servers; every field has a bound (length, count, range), so malformed
or oversized input is a 422, never a 500.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from fleetup._protocol import EventType
from fleetup.server._auth import Role

__all__ = [
    "AlertDeliveryPublic",
    "AlertPublic",
    "AlertRuleCreate",
    "AlertRulePublic",
    "AlertRuleUpdate",
    "AlertRulesPublic",
    "AlertsPublic",
    "AuditEntriesPublic",
    "AuditEntryPublic",
    "ChannelCreate",
    "ChannelPublic",
    "ChannelsPublic",
    "CheckinRequest",
    "CheckinResponse",
    "DevicePublic",
    "DevicesPublic",
    "EnrollRequest",
    "EnrollResponse",
    "EnrollmentTokenCreate",
    "EnrollmentTokenCreated",
    "EnrollmentTokenPublic",
    "EnrollmentTokensPublic",
    "ErrorBody",
    "ErrorResponse",
    "EventIn",
    "EventPublic",
    "EventsPublic",
    "EventsRequest",
    "EventsResponse",
    "FailureReasonPublic",
    "FailureReasonsPublic",
    "GroupPublic",
    "GroupsPublic",
    "HourRatesPublic",
    "NotificationCreate",
    "NotificationDeliveriesPublic",
    "NotificationDeliveryPublic",
    "NotificationPublic",
    "NotificationsPublic",
    "PercentilesPublic",
    "PushResult",
    "RatesPublic",
    "ReleasePublic",
    "ReleasesPublic",
    "RolloutAbort",
    "RolloutCreate",
    "RolloutDevicePublic",
    "RolloutDevicesPublic",
    "RolloutDryRun",
    "RolloutDryRunStage",
    "RolloutPublic",
    "RolloutStats",
    "RolloutsPublic",
    "StuckDevicePublic",
    "StuckDevicesPublic",
    "TimeToUpdatePublic",
    "TokenCreate",
    "TokenCreated",
    "TokenPublic",
    "TokensPublic",
    "VersionCountPublic",
    "VersionsPublic",
]

EVENT_TYPES = tuple(str(t) for t in EventType)  # the protocol's vocabulary, one place


@functools.lru_cache(maxsize=4096)
def _pep440(value: str) -> str:
    # Cached: a fleet reports few distinct versions, and every check-in carries some.
    try:
        Version(value)
    except InvalidVersion:
        raise ValueError(f"not a PEP 440 version: {value!r}") from None
    return value


INT_MAX = 2**31 - 1
"""The largest id or count the database stores (PostgreSQL ``INTEGER``)."""
PositiveDbInt = Annotated[int, Field(ge=1, le=INT_MAX)]  # an id or a count, as stored
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
VersionStr = Annotated[str, StringConstraints(max_length=100), AfterValidator(_pep440)]
ShortText = Annotated[str, StringConstraints(max_length=2000)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=200)]
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=100)]
TagValue = Annotated[str, StringConstraints(max_length=200)]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=50)]
Label = Annotated[str, StringConstraints(max_length=100)]


MAX_NESTING = 32
"""How deep any incoming message may nest. Checked without recursion before anything
walks the message recursively: 900 levels inside an event's ``details`` used to end in
a RecursionError (a 500)."""


def _input_problem(value: object, max_depth: int = MAX_NESTING, depth: int = 0) -> str | None:
    """Why ``value`` cannot be taken (a NUL in its text, nesting deeper than
    ``max_depth``), or ``None``. The recursion stops at ``max_depth``, so no input can
    exhaust the stack."""
    if isinstance(value, str):
        return "text may not hold a NUL character" if "\x00" in value else None
    if isinstance(value, dict):
        children: Iterable[object] = itertools.chain(value.keys(), value.values())
    elif isinstance(value, list | tuple):
        children = value
    else:
        return None
    if depth >= max_depth:
        return f"nested deeper than {max_depth} levels"
    for child in children:
        problem = _input_problem(child, max_depth, depth + 1)
        if problem:
            return problem
    return None


class _NoNul(BaseModel):
    """Input whose text may hold no NUL character: PostgreSQL's text and JSON cannot store
    one, so it is refused here, on every database alike (a 422, never a 500). Nesting is
    bounded here too (``MAX_NESTING``)."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        problem = _input_problem(data)
        if problem:
            raise ValueError(problem)
        return data


class _In(_NoNul):
    """A device's message."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody


# -- the fleet protocol ---------------------------------------------------------------


class EnrollRequest(_In):
    enrollment_token: Token
    device_id: DeviceId
    app: Name
    platform: Name
    channel: Name = "stable"
    tags: Tags = Field(default_factory=dict)


class EnrollResponse(BaseModel):
    device_id: str
    device_token: str


class CheckinRequest(_In):
    device_id: DeviceId
    app: Name
    platform: Name
    channel: Name = "stable"
    tags: Tags = Field(default_factory=dict)
    version: VersionStr | None = None
    state: Annotated[str, StringConstraints(max_length=40)] = "idle"
    kept: Annotated[list[VersionStr], Field(max_length=100)] = Field(default_factory=list)
    failed: Annotated[list[VersionStr], Field(max_length=100)] = Field(default_factory=list)


class CheckinResponse(BaseModel):
    action: Literal["none", "install", "rollback"]
    version: str | None = None
    target: str | None = None
    rollout_id: int | None = None
    reason: str = ""
    next_check_seconds: int
    # Feature flags for the app: configuration, never a say in what is installed.
    flags: dict[str, str | int | float | bool] = Field(default_factory=dict)


MAX_DETAILS_BYTES = 4096
"""An event's ``details`` as stored, serialized: what one event may add to the database
and to its device's page (a 100 MB ``details`` used to be stored whole)."""
MAX_DETAILS_DEPTH = 4
MAX_EVENTS_PER_REQUEST = 500
"""Events in one report; the agent sends at most 200 at a time."""


def _bounded_details(details: dict[str, Any]) -> dict[str, Any]:
    problem = _input_problem(details, MAX_DETAILS_DEPTH)
    if problem:
        raise ValueError(f"details {problem}")
    size = len(json.dumps(details, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode())
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"details are {size} bytes as JSON; at most {MAX_DETAILS_BYTES}")
    return details


Details = Annotated[dict[Annotated[str, StringConstraints(max_length=100)], Any],
                    Field(max_length=50), AfterValidator(_bounded_details)]


class EventIn(_In):
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    at: datetime
    version: VersionStr | None = None
    from_version: VersionStr | None = None
    update_id: Annotated[str, StringConstraints(max_length=100)] | None = None
    rollout_id: PositiveDbInt | None = None
    reason: ShortText = ""
    details: Details = Field(default_factory=dict)


class EventsRequest(_In):
    events: Annotated[list[EventIn], Field(max_length=MAX_EVENTS_PER_REQUEST)]


class EventsResponse(BaseModel):
    accepted: list[str]
    duplicates: list[str]


# -- devices (operators) ----------------------------------------------------------------


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    app: str
    platform: str
    channel: str
    tags: dict[str, str]
    version: str | None
    previous_version: str | None
    state: str
    enrolled_at: datetime
    last_seen: datetime | None
    channel_override: str | None = None
    check_requested_at: datetime | None = None
    removed_at: datetime | None = None
    kept: list[str] | None = None
    rollback_to: str | None = None
    pinned_version: str | None = None
    rolled_back_from: str | None = None


class DeviceRollback(BaseModel):
    """``POST /devices/{id}/rollback``: a kept version (``null``: its previous one)."""

    to: VersionStr | None = None


class DevicePin(BaseModel):
    """``POST /devices/{id}/pin``: a version the server has for the device's app."""

    version: VersionStr


class FlagSet(BaseModel):
    """``PUT /flags/{app}/{name}``: a value for the default, a channel, a group
    (``TAG=VALUE``) or a device (at most one of the three)."""

    value: str | int | float | bool
    channel: Annotated[str, StringConstraints(max_length=200)] | None = None
    group: Annotated[str, StringConstraints(max_length=200)] | None = None
    device: Annotated[str, StringConstraints(max_length=200)] | None = None


class FlagPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    app: str
    name: str
    scope: str
    scope_key: str
    value: dict[str, Any]
    updated_at: datetime
    updated_by: str


class DeviceMove(BaseModel):
    """``POST /devices/{id}/move``: the channel the server decides by (``null``: the
    device's configured channel again)."""

    channel: Name | None


class DevicesPublic(BaseModel):
    data: list[DevicePublic]
    count: int


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event_id: str
    device_id: str
    type: str
    at: datetime
    received_at: datetime
    version: str | None
    from_version: str | None
    update_id: str | None
    rollout_id: int | None
    reason: str
    details: dict[str, Any]


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int


class GroupPublic(BaseModel):
    tag: str
    value: str
    devices: int


class GroupsPublic(BaseModel):
    data: list[GroupPublic]
    count: int


# -- channels -------------------------------------------------------------------------


class ChannelBase(BaseModel):
    name: Name
    description: ShortText = ""


class ChannelCreate(ChannelBase, _NoNul):
    model_config = ConfigDict(extra="forbid")


class ChannelPublic(ChannelBase):
    model_config = ConfigDict(from_attributes=True)

    created_at: datetime


class ChannelsPublic(BaseModel):
    data: list[ChannelPublic]
    count: int


# -- releases -------------------------------------------------------------------------


class ReleasePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    app: str
    version: str
    platform: str
    target_path: str
    length: int
    sha256: str
    channels: list[str]
    update_type: str
    yanked: bool
    published: str
    targets_version: int
    pushed_at: datetime


class ReleasesPublic(BaseModel):
    data: list[ReleasePublic]
    count: int


class PushResult(BaseModel):
    targets_version: int
    snapshot_version: int
    timestamp_version: int
    stored_files: list[str]
    releases: list[ReleasePublic]
    # Release targets the pushed metadata names whose files are not pushed yet.
    pending: list[str] = []
    # True when the push changed nothing: the release was already on the server.
    already_pushed: bool = False


# -- rollouts -------------------------------------------------------------------------


class RolloutBase(BaseModel):
    app: Name
    version: VersionStr
    channel: Name = "stable"
    stages: Annotated[list[Annotated[float, Field(gt=0, le=100)]],
                      Field(min_length=1, max_length=20)] = Field(
        default_factory=lambda: [1.0, 10.0, 50.0, 100.0])
    soak_seconds: Annotated[int, Field(ge=0, le=90 * 86400)] = 3600
    min_reports: Annotated[int, Field(ge=0, le=1_000_000)] = 5
    max_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    group: Tags = Field(default_factory=dict)
    max_failure_increase: Annotated[float | None, Field(ge=0, le=1)] = Field(
        default=None, description="Control-group gate: halt when the health-report "
        "failure rate of devices on the release exceeds that of devices still on another "
        "version by more than this, at ``confidence`` (None: no gate).")
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    on_halt: Literal["pause", "rollback"] = Field(
        default="pause", description="What a halt does: pause, or abort with rollback "
                                     "(devices that took the release go back).")


class RolloutCreate(RolloutBase, _NoNul):
    model_config = ConfigDict(extra="forbid")


class RolloutAbort(_NoNul):
    model_config = ConfigDict(extra="forbid")

    rollback: bool = False
    reason: ShortText = ""


class RolloutStats(BaseModel):
    stage_targeted: int
    stage_reports: int
    stage_failures: int
    total_reports: int
    total_failures: int
    next: str
    gate: RolloutGate | None = None


class RolloutGroup(BaseModel):
    devices: int
    failures: int
    failure_rate: float


class RolloutGate(BaseModel):
    """The control-group gate's numbers (see ``server._gate``)."""

    verdict: Literal["pass", "halt", "wait"]
    treated: RolloutGroup
    control: RolloutGroup
    difference: float
    max_failure_increase: float
    confidence: float
    z: float
    p_value: float
    reason: str


class RolloutPublic(RolloutBase):
    id: int
    stage_index: int
    stage_percent: float
    stage_started_at: datetime
    state: Literal["active", "paused", "completed", "aborted"]
    state_reason: str
    rollback: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    revision: int
    stats: RolloutStats | None = None


class RolloutsPublic(BaseModel):
    data: list[RolloutPublic]
    count: int


class RolloutDevicePublic(BaseModel):
    device_id: str
    version: str | None
    platform: str
    channel: str
    cohort: float
    targeted: bool
    outcome: str | None
    reason: str


class RolloutDevicesPublic(BaseModel):
    data: list[RolloutDevicePublic]
    count: int


# -- tokens and audit -----------------------------------------------------------------


class TokenBase(BaseModel):
    name: Label = ""
    role: Role


class TokenCreate(TokenBase, _NoNul):
    model_config = ConfigDict(extra="forbid")


class TokenPublic(TokenBase):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str


class TokensPublic(BaseModel):
    data: list[TokenPublic]
    count: int


class EnrollmentTokenCreate(_NoNul):
    model_config = ConfigDict(extra="forbid")

    name: Label = ""
    max_uses: PositiveDbInt | None = None
    expires_at: datetime | None = None


class EnrollmentTokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked_at: datetime | None


class EnrollmentTokenCreated(EnrollmentTokenPublic):
    token: str


class EnrollmentTokensPublic(BaseModel):
    data: list[EnrollmentTokenPublic]
    count: int


class AuditEntryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class AuditEntriesPublic(BaseModel):
    data: list[AuditEntryPublic]
    count: int


# -- rollout dry run ------------------------------------------------------------------


class RolloutDryRunStage(BaseModel):
    index: int
    percent: float
    reached: int = Field(description="Devices in scope whose cohort is below the stage's "
                                     "percent (cumulative).")
    new: int = Field(description="Of those, the devices this stage adds.")
    will_install: int = Field(description="Of the devices reached, those that would be "
                                          "offered the release (cumulative).")


class RolloutDryRun(BaseModel):
    rollout_id: int = Field(description="The id the rollout would get if started now; its "
                                        "cohorts depend on it.")
    app: str
    version: str
    channel: str
    matching: int = Field(description="Devices of the app and channel in the group.")
    in_scope: int = Field(description="Of those, the devices on a platform the release "
                                      "exists for.")
    will_install: int
    stages: list[RolloutDryRunStage]


# -- analytics --------------------------------------------------------------------------


class HourRatesPublic(BaseModel):
    start: datetime
    updates: int
    succeeded: int
    failed: int
    rolled_back: int
    success_rate: float | None
    failure_rate: float | None
    rollback_rate: float | None


class RatesPublic(BaseModel):
    """Updates finished in the window and how they ended (shares of updates, 0-1)."""

    hours: int
    app: str | None
    updates: int
    succeeded: int
    failed: int
    rolled_back: int
    success_rate: float | None
    failure_rate: float | None
    rollback_rate: float | None
    hourly: list[HourRatesPublic]


class VersionCountPublic(BaseModel):
    app: str
    version: str | None
    devices: int
    share: float


class VersionsPublic(BaseModel):
    data: list[VersionCountPublic]
    count: int


class PercentilesPublic(BaseModel):
    count: int
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None


class TimeToUpdatePublic(BaseModel):
    hours: int
    app: str | None
    rollout_id: int | None
    install_seconds: PercentilesPublic
    rollout_seconds: PercentilesPublic


class StuckDevicePublic(BaseModel):
    device_id: str
    app: str
    channel: str
    version: str | None
    target_version: str
    rollout_id: int
    stuck_hours: float
    last_seen: datetime | None


class StuckDevicesPublic(BaseModel):
    hours: float
    data: list[StuckDevicePublic]
    count: int


class FailureReasonPublic(BaseModel):
    reason: str
    count: int
    devices: int
    types: list[str]


class FailureReasonsPublic(BaseModel):
    hours: int
    data: list[FailureReasonPublic]
    count: int


# -- alerts ---------------------------------------------------------------------------


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook URL is http:// or https:// with a host")
    return value


AlertRuleKind = Literal["failure_rate", "stuck_devices", "rollback", "integrity_failure",
                        "running_yanked"]
WebhookUrl = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_http_url)]
RuleName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Secret = Annotated[str, StringConstraints(max_length=200)]


class AlertRuleBase(BaseModel):
    name: RuleName
    kind: AlertRuleKind
    threshold: Annotated[float, Field(ge=0, le=1_000_000, description=(
        "failure_rate: the share of failed devices (0-1) above which it fires; "
        "stuck_devices: hours behind the channel's target; unused by the others."))] = 0.0
    min_count: Annotated[int, Field(ge=1, le=1_000_000, description=(
        "failure_rate: reporting devices needed; stuck_devices: stuck devices needed."))] = 1
    app: Name | None = None
    webhook_url: WebhookUrl | None = None
    enabled: bool = True


class AlertRuleCreate(AlertRuleBase, _NoNul):
    model_config = ConfigDict(extra="forbid")

    webhook_secret: Secret = Field(default="", description=(
        "Signs each POST: X-Fleetup-Signature: sha256=<HMAC-SHA256 of the body>."))


class AlertRuleUpdate(_NoNul):
    model_config = ConfigDict(extra="forbid")

    name: RuleName | None = None
    threshold: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    min_count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    app: Name | None = None
    webhook_url: WebhookUrl | None = None
    webhook_secret: Secret | None = None
    enabled: bool | None = None


class AlertRulePublic(AlertRuleBase):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    signed: bool = Field(description="Whether POSTs carry X-Fleetup-Signature.")


class AlertRulesPublic(BaseModel):
    data: list[AlertRulePublic]
    count: int


class AlertDeliveryPublic(BaseModel):
    """One webhook delivery of an alert: its outbox row (the URL is shown to admins)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    state: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str
    idempotency_key: str
    created_at: datetime
    delivered_at: datetime | None
    transport: Literal["webhook", "email"] = "webhook"
    event: str = "alert.opened"


class AlertPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    rule_id: int
    rule_name: str
    kind: str
    severity: str
    key: str
    app: str | None
    title: str
    details: dict[str, Any]
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    deliveries: list[AlertDeliveryPublic] = Field(default_factory=list)


class AlertsPublic(BaseModel):
    data: list[AlertPublic]
    count: int


# -- e-mail notifications -------------------------------------------------------------

# One address, no display name: nothing that could start a second recipient or header.
EmailAddress = Annotated[str, StringConstraints(
    max_length=254, pattern=r"^[^@\s,;<>()\"\\]+@[A-Za-z0-9.-]+$")]
NotifyEventName = Literal["rollout.paused", "rollout.completed", "alert.opened",
                          "release.pushed"]


class NotificationCreate(_NoNul):
    """An e-mail subscription: these recipients hear of these events (of one app, or
    of all with ``app`` unset)."""

    model_config = ConfigDict(extra="forbid")

    name: RuleName
    recipients: Annotated[list[EmailAddress], Field(min_length=1, max_length=20)]
    events: Annotated[list[NotifyEventName], Field(min_length=1, max_length=4)]
    app: Name | None = None
    enabled: bool = True


class NotificationPublic(NotificationCreate):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    created_by: str


class NotificationsPublic(BaseModel):
    data: list[NotificationPublic]
    count: int


class NotificationDeliveryPublic(AlertDeliveryPublic):
    """One e-mail in the outbox: to whom, about what, and how sending it went."""

    alert_id: int | None
    to: list[str]
    subject: str


class NotificationDeliveriesPublic(BaseModel):
    data: list[NotificationDeliveryPublic]
    count: int
