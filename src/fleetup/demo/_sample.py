"""The demo's sample application: three releases of a tiny service.

The app writes a heartbeat with its version into ``$FLEETUP_DATA`` every half second;
its health check passes once the heartbeat of the version it belongs to is fresh.
Release 1.2.0 has a bug: it exits at start ("database schema v3 not found"), so no
heartbeat ever appears and its health check fails — as a real broken build would.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_release"]

_APP = """#!/bin/sh
# demo service {version}: a heartbeat every half second, with the version in it
{crash}while true; do
  echo "{version} $(date +%s)" > "$FLEETUP_DATA/heartbeat.tmp"
  mv "$FLEETUP_DATA/heartbeat.tmp" "$FLEETUP_DATA/heartbeat"
  sleep 0.5
done
"""

_CRASH = """echo "fatal: database schema v3 not found (this build expects a migration)" >&2
exit 1
"""

_HEALTH = """#!/bin/sh
# healthy once this version's heartbeat is fresh (at most 5 s of waiting)
for i in $(seq 1 25); do
  if [ -f "$FLEETUP_DATA/heartbeat" ]; then
    set -- $(cat "$FLEETUP_DATA/heartbeat")
    if [ "$1" = "$FLEETUP_VERSION" ] && [ $(( $(date +%s) - $2 )) -le 2 ]; then
      exit 0
    fi
  fi
  sleep 0.2
done
echo "no heartbeat from $FLEETUP_VERSION within 5 s" >&2
exit 1
"""


def write_release(dest: Path, version: str, *, broken: bool = False) -> Path:
    """Write the tree of one release of the sample app into ``dest``."""
    (dest / "bin").mkdir(parents=True)
    app = dest / "bin" / "app"
    app.write_text(_APP.format(version=version, crash=_CRASH if broken else ""))
    app.chmod(0o755)
    health = dest / "health.sh"
    health.write_text(_HEALTH)
    health.chmod(0o755)
    (dest / "VERSION").write_text(version + "\n")
    (dest / "README").write_text(f"fleetup demo service {version}\n")
    share = dest / "share"
    share.mkdir()
    # Some bulk that mostly stays the same between versions, so deltas have work to do.
    for i in range(40):
        (share / f"asset-{i:02d}.txt").write_text(
            f"asset {i}\n" + "".join(f"line {n} of asset {i}\n" for n in range(400)))
    (share / "changelog.txt").write_text(f"{version}: see the release notes\n")
    return dest
