"""The agent's seams: where releases come from, who decides, where events go.

- :class:`ReleaseSource` — signed releases and their bytes (``_trust.TufReleaseSource``
  over python-tuf; tests may pass a fake).
- :class:`Director` — decides what the device does next: :class:`StaticDirector` from
  the signed facts alone; the fleet director asks the server, then checks its answer
  against the same facts.
- :class:`EventSink` — receives every lifecycle event (logged in static mode, queued on
  disk and sent to the server in fleet mode).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fleetup._facts import DeltaFacts, ReleaseFacts
from fleetup._protocol import EventType, RolloutId
from fleetup.agent._choice import Decision, DeviceView, choose
from fleetup.agent._config import PolicyConfig

__all__ = ["RUNNING_YANKED", "AgentEvent", "Director", "EventSink", "LogSink", "ReleaseSource",
           "StaticDirector", "new_event"]

log = logging.getLogger("fleetup.agent")

# The installed release is yanked and no release this device's policy allows can
# replace it: the device stays and says so, so that the server can alert.
RUNNING_YANKED = str(EventType.RUNNING_YANKED)

Progress = Callable[[int, int], None]
Tee = Callable[[int, bytes], None]


class ReleaseSource(Protocol):
    """Signed releases and their verified bytes."""

    def refresh(self) -> None: ...

    def releases(self, app: str, platform: str) -> list[ReleaseFacts]: ...

    def delta(self, app: str, platform: str, from_version: str, to_version: str
              ) -> tuple[DeltaFacts, int] | None: ...

    def release_length(self, facts: ReleaseFacts) -> int: ...

    def download(self, target_path: str, dest: Path, progress: Progress | None = None,
                 tee: Tee | None = None) -> Path:
        """Fetch and verify ``target_path`` into the file ``dest``. ``tee(offset, data)``,
        if given, may see the bytes as they arrive; a source may also never call it."""
        ...


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One step of the lifecycle, as reported to the fleet server (ids made here)."""

    type: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: str | None = None
    from_version: str | None = None
    update_id: str | None = None
    rollout_id: RolloutId | None = None
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["details"] = dict(self.details)
        return body


def new_event(kind: str, **fields: Any) -> AgentEvent:
    return AgentEvent(type=kind, **fields)


class EventSink(Protocol):
    """Receives events; must never raise and never block for long."""

    def emit(self, event: AgentEvent) -> None: ...

    def flush(self) -> None: ...


class LogSink:
    """Static mode: events go to the log only."""

    def emit(self, event: AgentEvent) -> None:
        detail = f" {event.from_version or '-'} -> {event.version}" if event.version else ""
        reason = f": {event.reason}" if event.reason else ""
        log.info("event %s%s%s", event.type, detail, reason)

    def flush(self) -> None:
        return None


class Director(Protocol):
    """Decides what the device should do next."""

    def decide(self, device: DeviceView, source: ReleaseSource, now: datetime,
               wanted: str | None = None) -> Decision: ...

    def next_check(self, default: float) -> float:
        """Seconds until the next check (fleet mode: what the server said)."""
        ...


class StaticDirector:
    """Static mode: the newest eligible signed release, by local policy and cohort."""

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy

    def decide(self, device: DeviceView, source: ReleaseSource, now: datetime,
               wanted: str | None = None) -> Decision:
        releases = source.releases(device.app, device.platform)
        return choose(releases, device, self.policy, now, wanted)

    def next_check(self, default: float) -> float:
        return default
