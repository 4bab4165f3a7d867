"""HttpxFetcher through its seams: httpx.MockTransport, a fake clock and a seeded rng."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions

from fleetup.agent._fetcher import (
    FetchSettings,
    HttpxFetcher,
    RetryBudget,
    TokenBucket,
    backoff_delay,
    retry_after_seconds,
)
from fleetup.errors import UsageError
from tests.support.clock import FakeClock

BASE = "https://repo.test/"
TARGET = f"{BASE}targets/app/app-1.0.tar.zst"
META = f"{BASE}metadata/timestamp.json"
DATA = random.Random(7).randbytes(10_000)

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]




class Script:
    """A fake server: answers requests with the given steps, in order; records them."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)

    @property
    def ranges(self) -> list[str | None]:
        return [r.headers.get("range") for r in self.requests]


def chunks(data: bytes, size: int = 1000, *, cut_after: int | None = None,
           clock: FakeClock | None = None, tick: float = 0.0) -> Iterator[bytes]:
    """A body sent in pieces; optionally slow (each piece advances the fake clock) or cut."""
    sent = 0
    for start in range(0, len(data), size):
        if cut_after is not None and sent >= cut_after:
            raise httpx.ReadError("connection reset by peer")
        if clock is not None:
            clock.now += tick
        piece = data[start:start + size]
        sent += len(piece)
        yield piece


def serve(data: bytes, *, ignore_range: bool = False, cut_after: int | None = None
          ) -> Callable[[httpx.Request], httpx.Response]:
    """A server for ``data`` that honours ``Range`` (unless told not to)."""
    def handler(request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        if wanted and not ignore_range:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            return httpx.Response(
                206, headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                content=chunks(data[start:], cut_after=cut_after))
        return httpx.Response(200, content=chunks(data, cut_after=cut_after))
    return handler


def make_fetcher(script: Script, clock: FakeClock, tmp_path: Path | None = None,
                 **settings: object) -> HttpxFetcher:
    return HttpxFetcher(
        FetchSettings(**settings),  # type: ignore[arg-type]
        partial_dir=tmp_path, resume_prefix=f"{BASE}targets/" if tmp_path else None,
        transport=httpx.MockTransport(script), clock=clock, sleep=clock.sleep,
        rng=random.Random(1))


def download(fetcher: HttpxFetcher, url: str = TARGET, max_length: int = len(DATA)) -> bytes:
    with fetcher.download_file(url, max_length) as f:
        return f.read()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- pure parts -----------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert [backoff_delay(n, 0.5, 3.0, Highest()) for n in range(1, 6)] == [
        0.5, 1.0, 2.0, 3.0, 3.0]
    rng = random.Random(3)
    draws = [backoff_delay(4, 0.5, 60.0, rng) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in draws)
    assert min(draws) < 1.0 < 3.0 < max(draws)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("7", 7.0), (" 120 ", 120.0), ("soon", None),
    ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
])
def test_retry_after_takes_seconds_or_an_http_date(header: str | None,
                                                   expected: float | None) -> None:
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds(header, now) == expected


def test_token_bucket_allows_a_burst_then_paces_to_the_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(1000, clock)
    assert bucket.delay_for(1000) == 0.0
    assert bucket.delay_for(500) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.delay_for(500) == pytest.approx(0.5)
    clock.now += 10
    assert bucket.delay_for(1000) == 0.0  # tokens never exceed one burst


def test_retry_budget_is_spent_by_retries_and_earned_back_by_successes() -> None:
    budget = RetryBudget(capacity=2, refill=0.5)
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    budget.earn()
    assert not budget.try_spend()
    budget.earn()
    assert budget.try_spend()
    for _ in range(10):
        budget.earn()
    assert budget.tokens == 2


@pytest.mark.parametrize("bad", [{"deadline": 0}, {"read_timeout": -1}, {"max_attempts": 0},
                                 {"rate_limit": 0}, {"backoff_base": -1}])
def test_settings_out_of_range_are_a_usage_error(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        FetchSettings(**bad)  # type: ignore[arg-type]


# -- requests ---------------------------------------------------------------------------


def test_a_download_sends_identity_and_user_agent_and_no_range(clock: FakeClock) -> None:
    script = Script(serve(DATA))
    assert make_fetcher(script, clock).download_bytes(META, len(DATA)) == DATA
    request, = script.requests
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["user-agent"].startswith("fleetup/")
    assert "range" not in request.headers
    assert clock.sleeps == []


def test_each_request_gets_the_read_timeout_or_what_is_left_of_the_deadline(
        clock: FakeClock) -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "10"}), serve(DATA))
    fetcher = make_fetcher(script, clock, read_timeout=30, connect_timeout=5, deadline=31,
                           backoff_base=0)
    fetcher.download_bytes(META, len(DATA))
    first, second = (r.extensions["timeout"] for r in script.requests)
    assert first == {"connect": 5, "read": 30, "write": 30, "pool": 30}
    assert clock.sleeps == [10.0]
    assert second == {"connect": 5, "read": 21, "write": 21, "pool": 21}


def test_fetch_of_the_interface_streams_the_body(clock: FakeClock) -> None:
    fetcher = make_fetcher(Script(serve(DATA)), clock)
    assert b"".join(fetcher.fetch(META)) == DATA


# -- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 416])
def test_a_client_error_stops_at_once(clock: FakeClock, status: int) -> None:
    script = Script(httpx.Response(status))
    with pytest.raises(exceptions.DownloadHTTPError) as caught:
        make_fetcher(script, clock).download_bytes(META, 100)
    assert caught.value.status_code == status
    assert len(script.requests) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_server_errors_and_throttling_are_retried_with_backoff(clock: FakeClock,
                                                              status: int) -> None:
    script = Script(httpx.Response(status), httpx.Response(status), serve(DATA))
    fetcher = make_fetcher(script, clock, backoff_base=1.0)
    assert fetcher.download_bytes(META, len(DATA)) == DATA
    assert len(script.requests) == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 1.0
    assert 0 <= clock.sleeps[1] <= 2.0


def test_retry_after_is_honoured(clock: FakeClock) -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "42"}), serve(DATA))
    make_fetcher(script, clock, backoff_base=1.0).download_bytes(META, len(DATA))
    assert clock.sleeps == [42.0]


def test_a_retry_after_beyond_the_deadline_gives_up_with_the_status(clock: FakeClock) -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "3600"}), serve(DATA))
    with pytest.raises(exceptions.DownloadHTTPError) as caught:
        make_fetcher(script, clock, deadline=60).download_bytes(META, len(DATA))
    assert caught.value.status_code == 503
    assert clock.sleeps == []


@pytest.mark.parametrize("failure", [httpx.ConnectError("connection refused"),
                                     httpx.ReadTimeout("timed out"),
                                     httpx.RemoteProtocolError("peer closed connection")])
def test_transport_failures_are_retried_up_to_max_attempts(clock: FakeClock,
                                                           failure: Exception) -> None:
    script = Script(failure)
    fetcher = make_fetcher(script, clock, max_attempts=4, backoff_base=1.0, backoff_cap=3.0)
    with pytest.raises(exceptions.DownloadError) as caught:
        fetcher.download_bytes(META, 100)
    assert not isinstance(caught.value, exceptions.SlowRetrievalError)
    assert META in str(caught.value)
    assert len(script.requests) == 4
    assert [s <= cap for s, cap in zip(clock.sleeps, [1.0, 2.0, 3.0], strict=True)] == [
        True] * 3


def test_an_unusable_url_is_not_retried(clock: FakeClock) -> None:
    script = Script(httpx.UnsupportedProtocol("no such scheme"))
    with pytest.raises(exceptions.DownloadError):
        make_fetcher(script, clock).download_bytes(META, 100)
    assert len(script.requests) == 1


def test_the_retry_budget_is_shared_across_downloads(clock: FakeClock) -> None:
    script = Script(httpx.ConnectError("connection refused"))
    fetcher = make_fetcher(script, clock, max_attempts=5, retry_budget=6, retry_refill=1)
    for _ in range(3):
        with pytest.raises(exceptions.DownloadError):
            fetcher.download_bytes(META, 100)
    # 5 attempts (4 retries), then 3 (the last 2 retries), then 1: the budget is dry
    assert len(script.requests) == 5 + 3 + 1
    assert fetcher.budget.tokens == 0


def test_successes_earn_the_retry_budget_back(clock: FakeClock) -> None:
    script = Script(httpx.Response(500), serve(DATA))
    fetcher = make_fetcher(script, clock, retry_budget=3, retry_refill=1)
    fetcher.download_bytes(META, len(DATA))
    assert fetcher.budget.tokens == 3


# -- deadline ------------------------------------------------------------------------------


def test_a_slow_body_hits_the_overall_deadline(clock: FakeClock) -> None:
    script = Script(lambda _r: httpx.Response(200, content=chunks(DATA, 1000, clock=clock,
                                                                   tick=2.0)))
    fetcher = make_fetcher(script, clock, deadline=9, read_timeout=5)
    with pytest.raises(exceptions.SlowRetrievalError, match="9 s deadline"):
        fetcher.download_bytes(META, len(DATA))
    assert len(script.requests) == 1


def test_a_read_timeout_at_the_deadline_is_slow_retrieval(clock: FakeClock) -> None:
    def stall(_request: httpx.Request) -> httpx.Response:
        clock.now += 10
        raise httpx.ReadTimeout("no bytes for 10 s")

    fetcher = make_fetcher(Script(stall), clock, deadline=10)
    with pytest.raises(exceptions.SlowRetrievalError):
        fetcher.download_bytes(META, len(DATA))


def test_backoff_never_sleeps_past_the_deadline(clock: FakeClock) -> None:
    script = Script(httpx.ConnectError("connection refused"))
    fetcher = make_fetcher(script, clock, deadline=5, backoff_base=2, max_attempts=50)
    with pytest.raises(exceptions.DownloadError, match="connection refused"):
        fetcher.download_bytes(META, 100)
    assert sum(clock.sleeps) < 5


# -- length cap -------------------------------------------------------------------------


def test_a_declared_length_above_the_cap_is_refused_before_reading() -> None:
    read: list[bytes] = []

    def body() -> Iterator[bytes]:
        read.append(b"x")
        yield b"x" * 5000

    script = Script(httpx.Response(200, headers={"Content-Length": "5000"}, content=body()))
    with pytest.raises(exceptions.DownloadLengthMismatchError):
        make_fetcher(script, FakeClock()).download_bytes(META, 4999)
    assert read == []


def test_an_undeclared_body_is_cut_at_the_cap(clock: FakeClock, tmp_path: Path) -> None:
    script = Script(lambda _r: httpx.Response(200, content=chunks(DATA * 10)))
    fetcher = make_fetcher(script, clock, tmp_path)
    with pytest.raises(exceptions.DownloadLengthMismatchError):
        download(fetcher)
    assert list(tmp_path.iterdir()) == []
    assert len(script.requests) == 1


# -- resumable artifacts ------------------------------------------------------------------


def part_of(tmp_path: Path, url: str = TARGET) -> Path:
    return tmp_path / f"{hashlib.sha256(url.encode()).hexdigest()}.part"


def test_the_part_file_is_named_by_the_url_hash(clock: FakeClock, tmp_path: Path) -> None:
    fetcher = make_fetcher(Script(serve(DATA)), clock, tmp_path)
    assert fetcher.partial_path(TARGET) == part_of(tmp_path)
    assert fetcher.partial_path(META) is None


def test_a_cut_download_resumes_with_range_in_the_same_call(clock: FakeClock,
                                                            tmp_path: Path) -> None:
    script = Script(serve(DATA, cut_after=4000), serve(DATA))
    fetcher = make_fetcher(script, clock, tmp_path)
    assert download(fetcher) == DATA
    assert script.ranges == [None, "bytes=4000-"]
    assert not part_of(tmp_path).exists()


def test_a_cut_download_resumes_in_the_next_process(clock: FakeClock, tmp_path: Path) -> None:
    first = Script(serve(DATA, cut_after=3000))
    with pytest.raises(exceptions.DownloadError):
        download(make_fetcher(first, clock, tmp_path, max_attempts=1))
    assert part_of(tmp_path).read_bytes() == DATA[:3000]

    second = Script(serve(DATA))
    assert download(make_fetcher(second, clock, tmp_path)) == DATA
    assert second.ranges == ["bytes=3000-"]
    assert not part_of(tmp_path).exists()


def test_a_server_ignoring_range_makes_the_download_start_over(clock: FakeClock,
                                                               tmp_path: Path) -> None:
    part_of(tmp_path).write_bytes(b"stale bytes from another attempt")
    script = Script(serve(DATA, ignore_range=True))
    assert download(make_fetcher(script, clock, tmp_path)) == DATA
    assert script.ranges == ["bytes=32-"]


def test_a_server_ignoring_range_mid_call_does_not_duplicate_bytes(clock: FakeClock) -> None:
    script = Script(serve(DATA, cut_after=4000, ignore_range=True),
                    serve(DATA, ignore_range=True))
    assert b"".join(make_fetcher(script, clock).fetch(META)) == DATA
    assert make_fetcher(Script(serve(DATA, cut_after=2000), serve(DATA)),
                        clock).download_bytes(META, len(DATA)) == DATA


@pytest.mark.parametrize("answer", [
    httpx.Response(416),
    httpx.Response(206, headers={"Content-Range": "bytes 0-9/10000"}, content=DATA[:10]),
])
def test_a_refused_or_wrong_range_restarts_from_zero(clock: FakeClock, tmp_path: Path,
                                                     answer: httpx.Response) -> None:
    part_of(tmp_path).write_bytes(DATA[:500])
    script = Script(answer, serve(DATA))
    assert download(make_fetcher(script, clock, tmp_path)) == DATA
    assert script.ranges == ["bytes=500-", None]
    assert clock.sleeps == [0.0]


def test_a_complete_part_is_handed_over_without_a_request(clock: FakeClock,
                                                          tmp_path: Path) -> None:
    part_of(tmp_path).write_bytes(DATA)
    script = Script(serve(DATA))
    assert download(make_fetcher(script, clock, tmp_path)) == DATA
    assert script.requests == []


def test_a_part_longer_than_the_target_is_dropped(clock: FakeClock, tmp_path: Path) -> None:
    part_of(tmp_path).write_bytes(DATA + b"junk")
    script = Script(serve(DATA))
    assert download(make_fetcher(script, clock, tmp_path)) == DATA
    assert script.ranges == [None]


def test_a_part_that_fails_verification_is_deleted(clock: FakeClock, tmp_path: Path) -> None:
    fetcher = make_fetcher(Script(serve(DATA)), clock, tmp_path)

    def reject() -> None:
        with fetcher.download_file(TARGET, len(DATA)) as file:
            assert file.read() == part_of(tmp_path).read_bytes() == DATA
            raise exceptions.LengthOrHashMismatchError("hash mismatch")

    with pytest.raises(exceptions.LengthOrHashMismatchError):
        reject()
    assert not part_of(tmp_path).exists()


def test_an_interrupt_while_verifying_keeps_the_part(clock: FakeClock, tmp_path: Path) -> None:
    fetcher = make_fetcher(Script(serve(DATA)), clock, tmp_path)
    with pytest.raises(KeyboardInterrupt), fetcher.download_file(TARGET, len(DATA)):
        raise KeyboardInterrupt
    assert part_of(tmp_path).read_bytes() == DATA


def test_a_failed_transfer_keeps_what_arrived_and_nothing_if_nothing_did(
        clock: FakeClock, tmp_path: Path) -> None:
    with pytest.raises(exceptions.DownloadHTTPError):
        download(make_fetcher(Script(httpx.Response(404)), clock, tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_metadata_never_leaves_a_part(clock: FakeClock, tmp_path: Path) -> None:
    fetcher = make_fetcher(Script(serve(DATA, cut_after=1000)), clock, tmp_path,
                           max_attempts=1)
    with pytest.raises(exceptions.DownloadError):
        fetcher.download_bytes(META, len(DATA))
    assert list(tmp_path.iterdir()) == []


# -- bandwidth and progress ----------------------------------------------------------------


def test_the_bandwidth_cap_sleeps_to_keep_the_average_rate(clock: FakeClock) -> None:
    script = Script(serve(DATA))
    fetcher = make_fetcher(script, clock, rate_limit=2000)
    assert fetcher.download_bytes(META, len(DATA)) == DATA
    # the first 2000 bytes are the burst; the other 8000 take 4 s at 2000 B/s
    assert sum(clock.sleeps) == pytest.approx(4.0)


def test_progress_counts_up_to_the_total_from_where_a_resume_starts(
        clock: FakeClock, tmp_path: Path) -> None:
    part_of(tmp_path).write_bytes(DATA[:2500])
    seen: list[tuple[int, int]] = []
    fetcher = make_fetcher(Script(serve(DATA)), clock, tmp_path)
    with fetcher.reporting(lambda done, total: seen.append((done, total))):
        download(fetcher)
    assert seen[0] == (2500, len(DATA))
    assert seen[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    with fetcher.reporting(None):
        assert fetcher._progress is None


def test_redirects_are_followed(clock: FakeClock) -> None:
    script = Script(httpx.Response(302, headers={"Location": "https://cdn.test/t"}),
                    serve(DATA))
    assert make_fetcher(script, clock).download_bytes(META, len(DATA)) == DATA
    assert [str(r.url) for r in script.requests] == [META, "https://cdn.test/t"]


def test_an_own_client_is_closed_and_a_given_one_is_not() -> None:
    given = httpx.Client()
    with HttpxFetcher(client=given):
        pass
    assert not given.is_closed
    given.close()
    fetcher = HttpxFetcher()
    fetcher.close()
    assert fetcher._client.is_closed
    assert fetcher._client.trust_env


def test_the_tee_sees_every_byte_with_its_offset_and_a_resume_shows_its_gap(
        clock: FakeClock, tmp_path: Path) -> None:
    first = Script(serve(DATA, cut_after=3000))
    seen: list[tuple[int, int]] = []
    fetcher = make_fetcher(first, clock, tmp_path, max_attempts=1)
    with fetcher.teeing(lambda offset, data: seen.append((offset, len(data)))), \
            pytest.raises(exceptions.DownloadError):
        download(fetcher)
    assert seen[0][0] == 0
    assert sum(n for _, n in seen) == 3000
    resumed: list[int] = []
    again = make_fetcher(Script(serve(DATA)), clock, tmp_path)
    with again.teeing(lambda offset, data: resumed.append(offset)):
        assert download(again) == DATA
    assert resumed[0] == 3000  # the bytes before it are not coming: a gap


# -- stalls and a full disk ------------------------------------------------------------


def test_a_download_that_stalls_is_aborted_and_keeps_what_arrived(clock: FakeClock,
                                                                   tmp_path: Path) -> None:
    # 10 bytes a second: every read arrives well within its timeout, yet it is a stall.
    def trickle(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(DATA, 10, clock=clock, tick=1.0))

    fetcher = make_fetcher(Script(trickle), clock, tmp_path, stall_timeout=60,
                           stall_bytes=1024)
    with pytest.raises(exceptions.SlowRetrievalError,
                       match=r"stalled: \d+ bytes in \d+ s, fewer than 1024 "
                             r"\(download.stall_timeout = 60 s\)"):
        download(fetcher)
    assert 0 < part_of(tmp_path).stat().st_size < 1024  # the next cycle resumes from it


def test_a_slow_download_that_progresses_is_not_a_stall(clock: FakeClock,
                                                        tmp_path: Path) -> None:
    def slow(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(DATA, 1000, clock=clock, tick=30.0))

    fetcher = make_fetcher(Script(slow), clock, tmp_path, stall_timeout=60, stall_bytes=1024)
    assert download(fetcher) == DATA


def test_a_download_that_fills_the_disk_leaves_no_part_file(clock: FakeClock,
                                                            tmp_path: Path) -> None:
    # /dev/full answers every write with ENOSPC: the kernel's own full disk.
    part_of(tmp_path).symlink_to("/dev/full")
    fetcher = make_fetcher(Script(serve(DATA)), clock, tmp_path)
    with pytest.raises(OSError, match="No space left on device"):
        download(fetcher)
    assert not os.path.lexists(part_of(tmp_path))
