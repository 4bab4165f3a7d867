"""How far a download has got, for ``status --json`` and the status API.

The download runs in one process (a one-shot ``update`` or the daemon's worker) and is
read from another (``agent status``) or another thread (the status API), so the
figures go through a small file, ``<root>/.fleetup/progress.json``, replaced atomically
(a reader sees the old figures or the new ones, never half a file). Chunks arrive many
times a second; the file is rewritten at most every ``interval`` seconds, plus once at
the end, so reporting costs next to nothing on a slow device.

:func:`due` is the whole rate rule, pure; :class:`ProgressFile` is the IO around it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetup._atomic import atomic_write
from fleetup.errors import StorageError

__all__ = ["INTERVAL", "ProgressFile", "due"]

INTERVAL = 0.5  # seconds between two writes of the progress file, at most


def due(last_written: float | None, now: float, done: int, total: int,
        interval: float = INTERVAL) -> bool:
    """Whether to write the figures now: the first report, the last one (all bytes in),
    or ``interval`` seconds after the previous write."""
    if last_written is None or (total > 0 and done >= total):
        return True
    return now - last_written >= interval


class ProgressFile:
    """Writes ``{"step", "artifact", "done", "total"}`` to ``path`` at a bounded rate."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._last: float | None = None

    def reporter(self, step: str, artifact: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback for one download."""
        self._last = None

        def report(done: int, total: int) -> None:
            now = self.clock()
            if due(self._last, now, done, total):
                self._last = now
                self.write({"step": step, "artifact": artifact, "done": done,
                            "total": total or None})

        return report

    def write(self, figures: dict[str, Any]) -> None:
        # Progress is a courtesy: a full disk must not fail the download it describes.
        with contextlib.suppress(StorageError, OSError):
            atomic_write(self.path, json.dumps(figures, sort_keys=True).encode(), mode=0o600)

    def read(self) -> dict[str, Any] | None:
        try:
            body = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
