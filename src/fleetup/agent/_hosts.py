"""Which URLs the agent may fetch: ``[download] require_https`` and ``allowed_hosts``.

TUF already makes the transport untrusted: every byte is checked against signed
metadata, so plain HTTP or a hostile mirror cannot make a device install anything the
publisher did not sign, nor replay old metadata. What this policy adds is not integrity
but *privacy* (an eavesdropper on plain HTTP sees which releases a device fetches, hence
what it runs) and *control* (a device talks only to hosts its owner listed, whatever a
redirect or a fleet server says).

Pure: :meth:`HostPolicy.refusal` says why a URL is refused, or ``None``; the IO modules
check every request with it — the repository fetcher on every redirect hop, the fleet
client on each exchange, the push listener's NATS URL — and the config checks its own
URLs at load. Off by default (an empty policy refuses nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fleetup.errors import UsageError

__all__ = ["HostPolicy", "HostRefusedError"]

# Schemes that carry TLS: the HTTP ones for the repository and fleet server, the NATS
# ones for push (nats:// is plaintext unless the server insists).
_ENCRYPTED = frozenset({"https", "tls", "wss"})


class HostRefusedError(UsageError):
    """A URL the device's ``[download]`` policy forbids; retrying cannot help, only the
    configuration (or the server's redirect) can change."""


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """``allowed_hosts`` entries are host names (case-insensitive), or ``*.domain`` for
    any host under ``domain`` (not ``domain`` itself)."""

    require_https: bool = False
    allowed_hosts: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return self.require_https or bool(self.allowed_hosts)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched (one line naming it and its host), or ``None``."""
        if not self.active:
            return None
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").lower()
        shown = _shorten(url)
        if self.require_https and parts.scheme.lower() not in _ENCRYPTED:
            return (f"refusing {shown}: {parts.scheme or 'no scheme'}:// is not encrypted "
                    f"and [download] require_https is on (host {host or '?'})")
        if self.allowed_hosts and not self.allows(host):
            return f"refusing {shown}: host {host or '?'} is not in [download] allowed_hosts"
        return None

    def allows(self, host: str) -> bool:
        host = host.rstrip(".").lower()
        if not host or not self.allowed_hosts:
            return not self.allowed_hosts
        for entry in self.allowed_hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and host != entry[2:]:
                    return True
            elif host == entry:
                return True
        return False

    def check(self, url: str) -> None:
        """Raises:
            HostRefusedError: the policy forbids ``url``; the message names its host.
        """
        why = self.refusal(url)
        if why is not None:
            raise HostRefusedError(why)


def _shorten(url: str, limit: int = 120) -> str:
    """A URL fit for one error line (a hostile redirect may be kilobytes long)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in url)
    return text if len(text) <= limit else text[:limit] + "..."
