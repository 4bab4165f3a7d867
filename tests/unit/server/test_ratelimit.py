"""The failed-authentication limit: a token bucket per client address, on a fake clock."""

from __future__ import annotations

import pytest

from fleetup.server._ratelimit import FailureLimiter, client_key
from tests.support.clock import FakeClock


def limiter(clock: FakeClock, max_clients: int = 100) -> FailureLimiter:
    return FailureLimiter(burst=3, per_minute=6, max_clients=max_clients, clock=clock)


def test_a_burst_of_failures_then_a_wait_that_refills_one_try() -> None:
    clock = FakeClock()
    limits = limiter(clock)
    for _ in range(3):
        assert limits.retry_after("a") is None
        limits.failed("a")
    assert limits.retry_after("a") == pytest.approx(10.0)  # 6 a minute: one every 10 s
    clock.now += 4
    assert limits.retry_after("a") == pytest.approx(6.0)
    clock.now += 6
    assert limits.retry_after("a") is None
    limits.failed("a")
    assert limits.retry_after("a") == pytest.approx(10.0)


def test_addresses_are_counted_apart_and_forgotten_once_refilled() -> None:
    clock = FakeClock()
    limits = limiter(clock)
    for _ in range(3):
        limits.failed("a")
    assert limits.retry_after("b") is None
    clock.now += 30
    assert limits.retry_after("a") is None
    assert limits._buckets == {}


def test_many_addresses_cannot_grow_the_table_past_its_bound() -> None:
    clock = FakeClock()
    limits = limiter(clock, max_clients=10)
    for n in range(1000):
        limits.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limits._buckets) <= 10
    assert limits.retry_after("10.0.3.231") is None  # the newest are kept: 2 tries left


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    (None, "unknown"),
    ("testclient", "testclient"),
])
def test_client_keys(host: str | None, key: str) -> None:
    assert client_key(host) == key
