"""Release facts: what the publisher signs about each release, and target naming.

Facts ride in each TUF target's ``custom`` field under the key ``"fleetup"``, so they
are covered by the targets role's signatures. Three kinds of target exist per app and
platform::

    <app>/<platform>/<app>-<version>.tar.zst                 release archive
    <app>/<platform>/deltas/<app>-<from>_to_<to>.fdelta      delta patch
    <app>/<platform>/index.json                              signed list of releases

The agent discovers releases by downloading the index through the ``Updater`` and
looking each listed target up with ``Updater.get_targetinfo`` — public API only.

Everything here is pure: parsing and producing plain dicts.
"""

from __future__ import annotations

import json
import math
import platform as _platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from packaging.version import Version

from fleetup._paths import MAX_DEPTH
from fleetup._versions import UpdateType, parse_version
from fleetup.errors import RepositoryError, UsageError, VersionError

__all__ = [
    "DeltaFacts",
    "HealthSpec",
    "PhasedRollout",
    "ReleaseFacts",
    "check_name",
    "default_platform",
    "delta_target_path",
    "index_target_path",
    "parse_index",
    "release_target_path",
    "render_index",
]

FACTS_KEY = "fleetup"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def check_name(kind: str, value: str) -> str:
    """Validate an app, platform or channel name (letters, digits, ``._+-``).

    Raises:
        UsageError: the name is empty, too long or has other characters.
    """
    if not _NAME.match(value):
        raise UsageError(f"invalid {kind} name {value!r}: use letters, digits and ._+-")
    return value


def default_platform() -> str:
    """This machine's platform name, e.g. ``linux-x86_64``."""
    return f"{sys.platform}-{_platform.machine() or 'unknown'}".lower()


def release_target_path(app: str, platform: str, version: str) -> str:
    return f"{app}/{platform}/{app}-{version}.tar.zst"


def delta_target_path(app: str, platform: str, from_version: str, to_version: str) -> str:
    return f"{app}/{platform}/deltas/{app}-{from_version}_to_{to_version}.fdelta"


def index_target_path(app: str, platform: str) -> str:
    return f"{app}/{platform}/index.json"


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """How to tell that a release runs: a command (argv, run in ``current/``), an HTTP
    URL that must answer 2xx, or both; within ``timeout`` seconds."""

    command: tuple[str, ...] = ()
    url: str | None = None
    timeout: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        # Canonical JSON (what TUF signs) has no floats: whole seconds, rounded up.
        return {"command": list(self.command), "url": self.url,
                "timeout": max(1, math.ceil(self.timeout))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthSpec:
        command = data.get("command") or []
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise ValueError("health.command must be a list of strings")
        url = data.get("url")
        if url is not None and not isinstance(url, str):
            raise ValueError("health.url must be a string")
        timeout = float(data.get("timeout", 30.0))
        if not 0 < timeout <= 86400:
            raise ValueError("health.timeout must be between 0 and 86400 seconds")
        return cls(tuple(command), url, timeout)


@dataclass(frozen=True, slots=True)
class PhasedRollout:
    """A static-mode rollout schedule: after ``start + offset``, ``percent`` of devices.

    ``steps`` are ``(offset, percent)`` pairs with offsets and percents increasing.
    A device is in once its cohort (a stable hash of its id) is below the percent.
    """

    start: datetime
    steps: tuple[tuple[timedelta, float], ...]

    def percent_at(self, now: datetime) -> float:
        """The share of devices (0-100) the release is offered to at ``now``."""
        current = 0.0
        for offset, percent in self.steps:
            if now >= self.start + offset:
                current = percent
        return current

    def to_dict(self) -> dict[str, Any]:
        # Canonical JSON has no floats: seconds, and percents in basis points (1/100 %).
        return {"start": self.start.isoformat(),
                "steps": [[int(off.total_seconds()), round(pct * 100)]
                          for off, pct in self.steps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhasedRollout:
        start = datetime.fromisoformat(str(data["start"]))
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        steps = tuple((timedelta(seconds=int(o)), int(bp) / 100) for o, bp in data["steps"])
        _check_steps(steps)
        return cls(start, steps)

    @classmethod
    def parse(cls, text: str, start: datetime) -> PhasedRollout:
        """Parse ``"10,50@24h,100@48h"``: percent, optionally ``@`` delay (s, m, h, d).

        Raises:
            UsageError: the schedule is malformed, not increasing, or over 100 %.
        """
        steps: list[tuple[timedelta, float]] = []
        for part in text.split(","):
            pct_text, _, delay_text = part.strip().partition("@")
            try:
                percent = float(pct_text)
                delay = _parse_delay(delay_text) if delay_text else timedelta(0)
            except (ValueError, OverflowError):
                raise UsageError(f"bad rollout step {part!r}: use PERCENT[@DELAY]") from None
            steps.append((delay, percent))
        _check_steps(steps)
        return cls(start, tuple(steps))


def _parse_delay(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1:]
    if unit in units:
        return timedelta(seconds=float(text[:-1]) * units[unit])
    return timedelta(seconds=float(text))


def _check_steps(steps: Sequence[tuple[timedelta, float]]) -> None:
    previous = (timedelta(-1), -1.0)
    for delay, percent in steps:
        if not 0 < percent <= 100:
            raise UsageError(f"rollout percent {percent} is not in (0, 100]")
        if delay <= previous[0] or percent <= previous[1]:
            raise UsageError("rollout steps must grow in both delay and percent")
        previous = (delay, percent)


@dataclass(frozen=True, slots=True)
class ReleaseFacts:
    """The signed facts of one release archive."""

    app: str
    version: str
    platform: str
    channels: tuple[str, ...]
    update_type: UpdateType
    tree_digest: str
    tree_size: int
    tree_entries: int
    published: str
    notes: str = ""
    health: HealthSpec | None = None
    min_from: str | None = None
    yanked: bool = False
    yank_reason: str = ""
    rollout: PhasedRollout | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # How many levels deep the tree goes; releases signed before it was a fact lack it
    # (the agent then bounds depth by ``MAX_DEPTH`` alone).
    tree_depth: int | None = None

    @property
    def parsed_version(self) -> Version:
        return parse_version(self.version)

    @property
    def target_path(self) -> str:
        return release_target_path(self.app, self.platform, self.version)

    @property
    def depth_bound(self) -> int:
        """The deepest a tree of this release may go: signed, and never past MAX_DEPTH."""
        if self.tree_depth is None:
            return MAX_DEPTH
        return min(self.tree_depth, MAX_DEPTH)

    def yank(self, reason: str) -> ReleaseFacts:
        return replace(self, yanked=True, yank_reason=reason)

    def to_custom(self) -> dict[str, Any]:
        """The value stored under ``custom`` of the release's target."""
        body: dict[str, Any] = {
            "kind": "release", "app": self.app, "version": self.version,
            "platform": self.platform, "channels": list(self.channels),
            "type": self.update_type.value, "notes": self.notes,
            "tree": {"digest": self.tree_digest, "size": self.tree_size,
                     "entries": self.tree_entries,
                     **({} if self.tree_depth is None else {"depth": self.tree_depth})},
            "published": self.published, "min_from": self.min_from,
            "health": self.health.to_dict() if self.health else None,
            "yanked": self.yanked, "yank_reason": self.yank_reason,
            "rollout": self.rollout.to_dict() if self.rollout else None,
        }
        if self.extra:
            body["extra"] = dict(self.extra)
        return {FACTS_KEY: body}

    @classmethod
    def from_custom(cls, custom: Mapping[str, Any] | None, path: str = "") -> ReleaseFacts:
        """Parse the ``custom`` field of a release target.

        Raises:
            RepositoryError: the facts are missing or malformed.
        """
        body = _body(custom, "release", path)
        try:
            tree = body["tree"]
            facts = cls(
                app=check_name("app", str(body["app"])),
                version=str(parse_version(str(body["version"]))),
                platform=check_name("platform", str(body["platform"])),
                channels=tuple(check_name("channel", str(c)) for c in body["channels"]),
                update_type=UpdateType(body["type"]),
                tree_digest=str(tree["digest"]),
                tree_size=_nonneg(tree["size"]),
                tree_entries=_nonneg(tree["entries"]),
                published=str(body.get("published", "")),
                notes=str(body.get("notes") or ""),
                health=HealthSpec.from_dict(body["health"]) if body.get("health") else None,
                min_from=str(body["min_from"]) if body.get("min_from") else None,
                yanked=bool(body.get("yanked", False)),
                yank_reason=str(body.get("yank_reason") or ""),
                rollout=PhasedRollout.from_dict(body["rollout"]) if body.get("rollout") else None,
                extra=dict(body.get("extra") or {}),
                tree_depth=_nonneg(tree["depth"]) if "depth" in tree else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError, UsageError, VersionError) as e:
            raise RepositoryError(f"malformed release facts in {path or 'target'}: {e}") from e
        return facts


@dataclass(frozen=True, slots=True)
class DeltaFacts:
    """The signed facts of a delta patch: which installed release it applies to, and
    which release (by its full target path) it produces."""

    app: str
    platform: str
    from_version: str
    to_version: str
    release_target: str
    method: str
    # Patch methods beyond what every agent has (e.g. "hdiff"): a device lacking one
    # skips this delta and downloads the full archive instead.
    requires: tuple[str, ...] = ()

    @property
    def target_path(self) -> str:
        return delta_target_path(self.app, self.platform, self.from_version, self.to_version)

    def to_custom(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "delta", "app": self.app, "platform": self.platform,
                                "from": self.from_version, "to": self.to_version,
                                "release": self.release_target, "method": self.method}
        if self.requires:
            body["requires"] = sorted(self.requires)
        return {FACTS_KEY: body}

    @classmethod
    def from_custom(cls, custom: Mapping[str, Any] | None, path: str = "") -> DeltaFacts:
        """Parse the ``custom`` field of a delta target.

        Raises:
            RepositoryError: the facts are missing or malformed.
        """
        body = _body(custom, "delta", path)
        try:
            requires = body.get("requires", [])
            if not isinstance(requires, list):
                raise TypeError("requires must be a list")
            return cls(str(body["app"]), str(body["platform"]), str(body["from"]),
                       str(body["to"]), str(body["release"]), str(body["method"]),
                       tuple(str(r) for r in requires))
        except (KeyError, TypeError) as e:
            raise RepositoryError(f"malformed delta facts in {path or 'target'}: {e}") from e


def _body(custom: Mapping[str, Any] | None, kind: str, path: str) -> Mapping[str, Any]:
    body = (custom or {}).get(FACTS_KEY)
    if not isinstance(body, Mapping) or body.get("kind") != kind:
        raise RepositoryError(f"{path or 'target'} carries no fleetup {kind} facts")
    return body


def _nonneg(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def render_index(app: str, platform: str, release_targets: Sequence[str]) -> bytes:
    """The bytes of the signed index target listing an app's releases on a platform."""
    body = {"format": 1, "app": app, "platform": platform,
            "releases": sorted(release_targets)}
    return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"


def parse_index(data: bytes) -> list[str]:
    """The release target paths listed by an index.

    Raises:
        RepositoryError: the index is malformed.
    """
    try:
        body = json.loads(data)
        releases = body["releases"]
        if not isinstance(releases, list) or not all(isinstance(r, str) for r in releases):
            raise TypeError("releases is not a list of strings")
        return releases
    except (ValueError, KeyError, TypeError) as e:
        raise RepositoryError(f"malformed release index: {e}") from e


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
