"""A limit on failed authentication per client address: a token bucket, pure but a clock.

Tokens are 256-bit random, so guessing one is hopeless; the limit is there so that the
server does not answer 300 guesses a second forever (dashboard sign-in, operator,
device and enrollment tokens), and so that a leaked-but-revoked token being tried is
visible as 429s. Each address holds ``burst`` failures, refilled at ``per_minute``;
once empty, every authentication from that address is refused (429 + ``Retry-After``)
before its credential is looked at, the valid ones too: otherwise the answer would
still tell a guess from a hit.

Addresses: IPv4 as they are; IPv6 by their /64, since one host usually holds a whole
/64. At most ``max_clients`` addresses are tracked (those whose bucket refilled are
dropped first, then the least recently failed), so many addresses cannot grow memory
without bound.

The state is per process: with ``fleetup server --workers N`` an address gets up to N
times the limit (the kernel spreads connections over the workers).
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Callable

__all__ = ["FailureLimiter", "client_key"]


@functools.lru_cache(maxsize=65536)  # on every check-in; a fleet has few addresses
def client_key(host: str | None) -> str:
    """Who a request is from, for the limit: the address, an IPv6 one by its /64."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Token buckets of failed authentications, one per client key."""

    def __init__(self, burst: int, per_minute: float, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, when)
        # Sync routes run in worker threads; the check-in path on the event loop.
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds ``client`` must wait before it may try to authenticate, or ``None``."""
        if client not in self._buckets:  # the common case: no failure on record
            return None
        with self._lock:
            level = self._level(client, self.clock())
            if level >= self.burst:
                self._buckets.pop(client, None)
                return None
            return None if level >= 1 else (1 - level) / self.rate

    def failed(self, client: str) -> None:
        """Record one failed authentication from ``client``."""
        with self._lock:
            now = self.clock()
            level = self._level(client, now)
            self._buckets.pop(client, None)  # re-inserted last: the newest failure
            if len(self._buckets) >= self.max_clients:
                self._evict(now)
            self._buckets[client] = (max(0.0, level - 1), now)

    def _level(self, client: str, now: float) -> float:
        level, when = self._buckets.get(client, (self.burst, now))
        return min(self.burst, level + (now - when) * self.rate)

    def _evict(self, now: float) -> None:
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]
