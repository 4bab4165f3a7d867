"""Which targets make up one release, so a release can be pushed on its own.

One signed targets metadata lists every release a publisher has added. A fleet server
cannot re-sign targets (it holds no targets key), so it publishes the publisher's
metadata as it is, even when only some of the releases it names have been pushed. A
release is *installable* on the server when all its parts are there: its archive and
every delta that produces it (an agent may pick any of them). The other targets (the
signed indexes) are *shared*: every push brings the ones the server lacks.

Pure: plain maps of target path → ``custom`` field, no IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fleetup._facts import FACTS_KEY

__all__ = ["release_parts", "shared_targets", "version_parts"]


def _facts(custom: Mapping[str, Any] | None) -> Mapping[str, Any]:
    body = (custom or {}).get(FACTS_KEY)
    return body if isinstance(body, Mapping) else {}


def release_parts(customs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, list[str]]:
    """Each release target path → the target paths it needs: itself and its deltas.

    A delta naming a release that is not listed belongs to no release (and is ignored).
    """
    parts: dict[str, list[str]] = {path: [path] for path, custom in customs.items()
                                   if _facts(custom).get("kind") == "release"}
    for path, custom in customs.items():
        facts = _facts(custom)
        if facts.get("kind") == "delta" and facts.get("release") in parts:
            parts[str(facts["release"])].append(path)
    return parts


def shared_targets(customs: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The targets that belong to no single release (the signed indexes, anything else)."""
    return [path for path, custom in customs.items()
            if _facts(custom).get("kind") not in ("release", "delta")]


def version_parts(customs: Mapping[str, Mapping[str, Any] | None], app: str,
                  matches: Callable[[str], bool]) -> list[str]:
    """The parts of every release of ``app`` whose version ``matches(version)`` (all
    platforms), release archives first."""
    parts = release_parts(customs)
    wanted = [path for path in parts if _facts(customs[path]).get("app") == app
              and matches(str(_facts(customs[path]).get("version")))]
    return [part for path in wanted for part in parts[path]]
