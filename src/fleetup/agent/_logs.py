"""The agent's logs: a file under ``.fleetup/log/`` and the console, text or JSON lines.

Every agent command that changes or refuses something logs to the same file as the
daemon (``agent.log``), at the configured level; a one-shot command's console shows only
warnings, since it prints its own result. A record logged with ``extra={"file_only":
True}`` skips the console: the CLI's error boundary already printed that line there.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["JsonFormatter", "setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        body.update({k: v for k, v in vars(record).items()
                     if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def setup_logging(log_dir: Path | None, *, json_lines: bool = False, level: str = "INFO",
                  console: bool = True, console_level: str | None = None) -> None:
    """Send ``fleetup`` loggers to a rotating file in ``log_dir`` (from ``level``) and to
    stderr (from ``console_level``, by default ``level`` too)."""
    root = logging.getLogger("fleetup")
    levels = [logging.getLevelName(level), logging.getLevelName(console_level or level)]
    root.setLevel(min(levels) if console else levels[0])
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter: logging.Formatter = JsonFormatter() if json_lines else text
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_dir / "agent.log", maxBytes=5 << 20, backupCount=3)
        file_handler.setFormatter(JsonFormatter() if json_lines else text)
        file_handler.setLevel(level)
        root.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        stream.setLevel(console_level or level)
        stream.addFilter(_not_file_only)
        root.addHandler(stream)


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)
