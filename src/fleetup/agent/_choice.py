"""What should this device do? A pure decision over signed release facts.

Static mode decides here entirely; fleet mode lets the server choose and then checks its
choice against the same signed facts (:func:`check_instruction`). Pure: the inputs are
values (facts, versions, policy, the local time, the device id), the output a
:class:`Decision`.

Rules, in order:

1. An explicit version (``update --version V``) is installed if it is a signed,
   unyanked release newer than what is installed — even if it failed here before
   (an operator may insist) or policy would wait.
2. If the installed release is yanked, move off it: to the newest newer release that
   rule 3 would install now (the yank does not lift the device's policy: a held-back
   major stays held back), else back to the newest older unyanked release (a kept one
   is a rollback, no download; otherwise the publisher's yank is the signature for
   this downgrade). With neither, the device stays and the decision says it runs a
   yanked release (``running_yanked``).
3. Otherwise the newest release on this device's channel and platform that is newer
   than the installed one, not yanked, allowed from the installed version
   (``min_from``), not failed here, and whose phased rollout has reached this device's
   cohort, that policy lets install now: its update type (a step across a major
   version counts as major, whatever the release is signed as) and the maintenance
   window. If every such release must wait, the newest is reported (``Defer``): a
   waiting major does not hold back a minor or a security fix on the installed line.
   On a device with nothing installed there is nothing to break: the newest release
   installs at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from packaging.version import Version

from fleetup._cohort import cohort_of
from fleetup._facts import ReleaseFacts
from fleetup._versions import UpdateType, derive_update_type, parse_version
from fleetup.agent._config import PolicyConfig
from fleetup.errors import UsageError

__all__ = ["Decision", "Defer", "DeviceView", "Install", "RollbackTo", "UpToDate", "Waiting",
           "check_instruction", "choose", "choose_channel_downgrade", "waiting_of"]


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str = ""
    # Releases this device is deliberately not offered (failed here, not in cohort yet).
    skipped: tuple[tuple[str, str], ...] = field(default=(), kw_only=True)
    # A kept release to remove once this decision is carried out: one the publisher
    # yanked, so that no later rollback can return to it.
    retire: str | None = field(default=None, kw_only=True)
    # Set when the installed release is yanked and the device stays on it (no release
    # its policy allows to go to): why, for ``status`` and the fleet server.
    running_yanked: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class UpToDate(Decision):
    pass


@dataclass(frozen=True, slots=True)
class Install(Decision):
    facts: ReleaseFacts | None = None
    on_purpose: bool = False


@dataclass(frozen=True, slots=True)
class Defer(Decision):
    """A release is available but waits: manual-only type, or outside the window."""

    facts: ReleaseFacts | None = None


@dataclass(frozen=True, slots=True)
class RollbackTo(Decision):
    """Go back to a kept release (no download)."""

    version: str = ""


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the decision needs to know about the device."""

    device_id: str
    app: str
    platform: str
    channel: str
    installed: str | None
    kept: Collection[str] = ()
    failed: Mapping[str, str] = field(default_factory=dict)


def choose(releases: Iterable[ReleaseFacts], device: DeviceView, policy: PolicyConfig,
           now: datetime, wanted: str | None = None) -> Decision:
    """Decide what ``device`` should do given the signed ``releases``.

    ``now`` is timezone-aware; the maintenance window is read in its local time.

    Raises:
        UsageError: ``wanted`` is not a signed release for this device, is yanked, or
            is not newer than the installed version.
    """
    mine = [f for f in releases if f.app == device.app and f.platform == device.platform]
    installed = parse_version(device.installed) if device.installed else None
    if wanted is not None:
        return _explicit(mine, wanted, installed)
    current = _find(mine, installed) if installed is not None else None
    on_channel = [f for f in mine if device.channel in f.channels and not f.yanked]
    if current is not None and current.yanked:
        return _leave_yanked(current, on_channel, device, policy, now)
    skipped: list[tuple[str, str]] = []
    waiting: Decision | None = None
    for facts in sorted(on_channel, key=lambda f: f.parsed_version, reverse=True):
        version = facts.parsed_version
        if installed is not None and version <= installed:
            break
        blocked = _blocked(facts, device, installed, now)
        if blocked:
            skipped.append((facts.version, blocked))
            continue
        if installed is None:
            # Nothing installed, nothing to break: the first install ignores type policy.
            return Install("first install", facts=facts, skipped=tuple(skipped))
        decision = _by_policy(facts, installed, policy, now, tuple(skipped))
        if isinstance(decision, Install):
            return decision
        waiting = waiting or decision
    if waiting is not None:
        return waiting
    reason = "up to date" if installed is not None else "no release for this device yet"
    return UpToDate(reason, skipped=tuple(skipped))


def _explicit(mine: Sequence[ReleaseFacts], wanted: str, installed: Version | None) -> Decision:
    facts = _find(mine, parse_version(wanted))
    if facts is None:
        raise UsageError(f"no signed release {wanted} for this app and platform")
    if facts.yanked:
        raise UsageError(f"{facts.version} is yanked: {facts.yank_reason or 'no reason given'}")
    if installed is not None and facts.parsed_version <= installed:
        raise UsageError(f"{facts.version} is not newer than the installed {installed}; "
                         "use `rollback --to` for a kept release")
    return Install("requested by the operator", facts=facts, on_purpose=True)


def _leave_yanked(current: ReleaseFacts, on_channel: Sequence[ReleaseFacts],
                  device: DeviceView, policy: PolicyConfig, now: datetime) -> Decision:
    """Where a device goes when the publisher yanked what it runs (rule 2).

    A yank is a reason to leave, not to skip the device's policy: forward only to a
    release that policy would install now; else back to the newest older kept tree (no
    download); else to the newest older signed release; else stay and say so.
    """
    why = f"{current.version} was yanked: {current.yank_reason or 'no reason given'}"
    forward = _allowed_forward(current.parsed_version, on_channel, device, policy, now)
    if forward is not None:
        return Install(why, facts=forward, retire=current.version)
    older = sorted((f for f in on_channel if f.parsed_version < current.parsed_version),
                   key=lambda f: f.parsed_version, reverse=True)
    for facts in older:
        if facts.version in device.kept:
            return RollbackTo(why, version=facts.version, retire=current.version)
    if older:
        return Install(why, facts=older[0], on_purpose=True, retire=current.version)
    return UpToDate(f"{why}; no release this device's policy allows to go to",
                    running_yanked=why)


def _allowed_forward(installed: Version, on_channel: Sequence[ReleaseFacts],
                     device: DeviceView, policy: PolicyConfig, now: datetime
                     ) -> ReleaseFacts | None:
    """The newest newer release that is offered here and that policy installs now."""
    newer = sorted((f for f in on_channel if f.parsed_version > installed),
                   key=lambda f: f.parsed_version, reverse=True)
    for facts in newer:
        if _blocked(facts, device, installed, now):
            continue
        if isinstance(_by_policy(facts, installed, policy, now, ()), Install):
            return facts
    return None


def _blocked(facts: ReleaseFacts, device: DeviceView, installed: Version | None,
             now: datetime) -> str:
    """Why ``facts`` is not offered to this device, or ``""``."""
    if facts.version in device.failed:
        return f"failed its health check here: {device.failed[facts.version]}"
    if facts.min_from and installed is not None and installed < parse_version(facts.min_from):
        return f"needs {facts.min_from} or later installed first"
    if facts.rollout is not None:
        percent = facts.rollout.percent_at(now)
        cohort = cohort_of(device.device_id, facts.target_path)
        if cohort >= percent:
            return f"phased rollout at {percent:g}% has not reached this device ({cohort:.1f})"
    return ""


def _by_policy(facts: ReleaseFacts, installed: Version, policy: PolicyConfig, now: datetime,
               skipped: tuple[tuple[str, str], ...]) -> Decision:
    # The signed type is relative to the release published before it; a device further
    # behind may be crossing a major version on the way (1.0 -> 2.0.1 "patch").
    kind = facts.update_type
    if derive_update_type(installed, facts.parsed_version) is UpdateType.MAJOR:
        kind = UpdateType.MAJOR
    if kind not in policy.auto:
        return Defer(f"{kind} updates install only on request (update --version "
                     f"{facts.version})", facts=facts, skipped=skipped)
    window = policy.window
    if window is not None and kind not in policy.window_exempt \
            and not window.contains(now.astimezone().time()):
        return Defer(f"waiting for the maintenance window {window}", facts=facts,
                     skipped=skipped)
    return Install(f"{kind} update", facts=facts, skipped=skipped)


def _find(mine: Iterable[ReleaseFacts], version: Version) -> ReleaseFacts | None:
    for facts in mine:
        if facts.parsed_version == version:
            return facts
    return None


def check_instruction(releases: Iterable[ReleaseFacts], device: DeviceView, version: str,
                      rollback: bool, policy: PolicyConfig, now: datetime) -> Decision:
    """Check a fleet server's instruction against the signed facts and local policy.

    The server chooses among signed releases, nothing more: it may send this device to
    an unyanked release of its app, platform and channel that is newer than the
    installed one and whose signed ``min_from`` the device meets, or back to a kept
    release. A downgrade to anything else needs the publisher's signature (a yank),
    which :func:`choose` handles. The device's own policy (update types, window) then
    applies as in static mode (a :class:`Defer`) unless its config lets the server
    override it (``[policy] server_override``): a stolen server cannot push a held-back major.

    Raises:
        UsageError: the instruction breaks a signed fact; the message says why.
    """
    if rollback:
        if version not in device.kept:
            raise UsageError(f"server asked to roll back to {version}, which is not kept here")
        return RollbackTo("rollback requested by the fleet server", version=version)
    mine = [f for f in releases if f.app == device.app and f.platform == device.platform]
    facts = _find(mine, parse_version(version))
    if facts is None:
        raise UsageError(f"server asked for {version}, which is not a signed release "
                         f"for {device.app} on {device.platform}")
    if facts.version in device.failed:
        return UpToDate("not installing what failed here before",
                        skipped=((facts.version, device.failed[facts.version]),))
    installed = parse_version(device.installed) if device.installed else None
    _check_signed_facts(facts, device, installed)
    if installed is None or policy.server_override:
        return Install("chosen by the fleet server", facts=facts)
    decision = _by_policy(facts, installed, policy, now, ())
    if isinstance(decision, Install):
        return Install("chosen by the fleet server", facts=facts)
    return decision


def _check_signed_facts(facts: ReleaseFacts, device: DeviceView,
                        installed: Version | None) -> None:
    """Refuse what the publisher's signature rules out, whoever asks for it.

    Raises:
        UsageError: yanked, not signed for this channel, ``min_from`` not met, or not
            newer than the installed version.
    """
    asked = f"server asked for {facts.version}"
    if facts.yanked:
        raise UsageError(f"{asked}, which the publisher yanked")
    if device.channel not in facts.channels:
        raise UsageError(f"{asked}, which is signed for {', '.join(facts.channels)} only, "
                         f"not for this device's channel {device.channel}")
    if facts.min_from and installed is not None and installed < parse_version(facts.min_from):
        raise UsageError(f"{asked}, which needs {facts.min_from} or later installed first "
                         f"(installed: {installed})")
    if installed is not None and facts.parsed_version <= installed:
        raise UsageError(f"{asked}, not newer than the installed {installed}: "
                         "refusing a downgrade the publisher did not sign")


def choose_channel_downgrade(releases: Iterable[ReleaseFacts], device: DeviceView
                             ) -> Decision:
    """After a channel switch (canary to stable, say), the operator asks on the device
    for the newest release of the new channel even if it is older than what runs: a
    downgrade chosen on purpose, which :func:`choose` never makes by itself.

    Only signed facts count: the newest unyanked release of this app and platform signed
    for ``device.channel`` whose ``min_from`` the installed version meets. Policy (type,
    window, cohort) does not hold it back: the operator is choosing. A kept tree is a
    rollback (no download); the installed release itself means nothing to do.

    Raises:
        UsageError: the channel has no such release.
    """
    installed = parse_version(device.installed) if device.installed else None
    candidates = sorted(
        (f for f in releases if f.app == device.app and f.platform == device.platform
         and device.channel in f.channels and not f.yanked
         and not (f.min_from and installed is not None
                  and installed < parse_version(f.min_from))),
        key=lambda f: f.parsed_version)
    if not candidates:
        raise UsageError(f"no unyanked release of {device.app} for {device.platform} is "
                         f"signed for the channel {device.channel}")
    newest = candidates[-1]
    why = f"the newest release of the channel {device.channel}, chosen by the operator"
    if installed is not None and newest.parsed_version == installed:
        return UpToDate(f"{newest.version} is already the newest of {device.channel}")
    if newest.version in device.kept:
        return RollbackTo(why, version=newest.version)
    return Install(why, facts=newest, on_purpose=True)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A release that is available but that ``update`` will not install by itself yet."""

    version: str
    reason: str

    def line(self) -> str:
        return f"{self.version} waits: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "reason": self.reason}


def waiting_of(decision: Decision) -> Waiting | None:
    """Why ``decision`` holds a release back, or ``None`` if it does not.

    ``check`` counts such a release as available (exit 10) and ``update`` installs
    nothing (exit 0): this is the one line that tells a person why, and what to do
    (``update --version V`` for a type policy does not install; the window otherwise).
    """
    if isinstance(decision, Defer) and decision.facts is not None:
        return Waiting(decision.facts.version, decision.reason)
    return None
