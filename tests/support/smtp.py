"""A real SMTP server on loopback (aiosmtpd) for the e-mail notification tests.

It keeps every message it accepted, and can be left unstarted (its port then refuses
connections, as a mail server that is down does) and started later on the same port.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.fleet import free_port

__all__ = ["SMTPServer"]


@dataclass
class SMTPServer:
    port: int = field(default_factory=free_port)
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    _controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd's hook: keep the message and its envelope recipients, answer 250."""
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(
                envelope.original_content or envelope.content, policy=policy.default)))
        return "250 Message accepted for delivery"

    def start(self) -> SMTPServer:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[tuple[list[str], Message]]:
        with self._lock:
            return list(self.messages)
