"""The agent's HTTP: python-tuf's ``FetcherInterface`` on httpx, made for poor links.

python-tuf verifies every byte but leaves the transport to its fetcher. Devices sit
behind proxies, on metered links that drop, and a whole fleet retrying in step can
flatten a CDN. This module exists so that every download the agent makes:

- has a per-read timeout, a stall timeout (fewer than ``stall_bytes`` in
  ``stall_timeout`` seconds: aborted, not retried) and an overall deadline (past
  either: ``SlowRetrievalError``);
- retries connection errors, timeouts and HTTP 5xx/408/429 with exponential backoff and
  full jitter, honouring ``Retry-After``, within a per-download attempt limit and a
  :class:`RetryBudget` shared by all downloads (an outage fails fast, not in a storm);
- resumes artifacts with HTTP ``Range`` from ``<partial_dir>/<sha256(url)>.part``,
  across retries and across restarts of the agent;
- never takes more than python-tuf's ``max_length`` bytes;
- can be capped in bandwidth (:class:`TokenBucket`) and reports progress.

Transfer failures leave this module only as python-tuf's ``DownloadError`` family (plus
``OSError`` from the local disk), which is what python-tuf expects of a fetcher; a URL
that ``FetchSettings.url_check`` refuses (the device's host policy, checked before every
request and every redirect hop) leaves as the checker's own error, before any byte is sent;
``_trust`` maps those into :mod:`fleetup.errors`, once. Nothing
here decides what is genuine: a ``.part`` is only ever handed to python-tuf, which
checks its length and hashes against signed metadata, and it is deleted once python-tuf
is done with it, whether verification passed or failed.

One download at a time per fetcher: the agent is single-threaded by design.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO

import httpx
import tuf
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from fleetup._version import __version__
from fleetup.errors import UsageError

__all__ = [
    "FetchSettings",
    "HttpxFetcher",
    "Progress",
    "RetryBudget",
    "Tee",
    "TokenBucket",
    "backoff_delay",
    "retry_after_seconds",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(done_bytes, total_bytes)`` while a download runs."""

Tee = Callable[[int, bytes], None]
"""Called as ``tee(offset, data)`` with every chunk of an artifact as it is written; an
offset that is not where the previous chunk ended means the bytes before it are not
coming (a resumed or restarted download). Used to unpack while downloading; python-tuf
still verifies the whole file afterwards."""

Clock = Callable[[], float]
Sleep = Callable[[float], None]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """How the fetcher treats the network. Times are seconds, rates bytes per second.

    ``deadline`` bounds one whole download, retries and backoff included.
    ``retry_budget`` is how many retries may be banked across downloads; each
    successful download earns back ``retry_refill`` of them.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 1800.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    retry_budget: float = 20.0
    retry_refill: float = 0.5
    rate_limit: int | None = None
    stall_timeout: float = 60.0
    stall_bytes: int = 1024
    user_agent: str = f"fleetup/{__version__} python-tuf/{tuf.__version__}"
    # Called with every URL before it is requested, redirect hops included; raises to
    # refuse it (``[download] require_https`` / ``allowed_hosts``). None: no check.
    url_check: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        positive = {"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                    "deadline": self.deadline, "max_attempts": self.max_attempts,
                    "backoff_cap": self.backoff_cap, "stall_timeout": self.stall_timeout}
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"download setting {name} must be positive, got {value}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise UsageError(f"the bandwidth cap must be positive, got {self.rate_limit}")
        if min(self.backoff_base, self.retry_budget, self.retry_refill, self.stall_bytes) < 0:
            raise UsageError("backoff and retry budget settings cannot be negative")


class RetryBudget:
    """Retries the fetcher may still make, shared by every download it runs.

    Each retry spends one token; each successful download earns ``refill`` back, up to
    ``capacity``. While a server is down every request fails, the budget runs dry, and
    downloads fail after one attempt instead of multiplying the load on a sick server.
    """

    def __init__(self, capacity: float, refill: float) -> None:
        self.capacity = capacity
        self.refill = refill
        self.tokens = capacity

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` when none is left."""
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def earn(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.refill)


class TokenBucket:
    """A bandwidth cap: ``rate`` bytes per second on average, bursts up to ``burst``."""

    def __init__(self, rate: int, clock: Clock, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()

    def delay_for(self, size: int) -> float:
        """Take ``size`` bytes from the bucket; how long to sleep to stay under the cap."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= size
        return max(0.0, -self._tokens / self.rate)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1, 2, ...).

    A uniform draw in ``[0, min(cap, base * 2**(attempt - 1))]``: devices that failed
    together spread out instead of retrying in step.
    """
    return rng.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date).

    ``None`` when the header is absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class _Retryable(Exception):  # noqa: N818 - a signal inside this module, never raised out
    """This attempt failed in a way another attempt may not; ``error`` is what to raise
    if no attempt is left."""

    def __init__(self, error: exceptions.DownloadError, retry_after: float | None = None,
                 immediate: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.immediate = immediate


def _retryable(message: str, cause: BaseException | None = None,
               retry_after: float | None = None, immediate: bool = False) -> _Retryable:
    error = exceptions.DownloadError(message)
    error.__cause__ = cause
    return _Retryable(error, retry_after, immediate)


class _StallWatch:
    """Aborts a body that makes no real progress: fewer than ``min_bytes`` arriving in
    any ``timeout`` seconds (a trickle that each read timeout alone would let through)."""

    def __init__(self, clock: Clock, timeout: float, min_bytes: int) -> None:
        self._clock = clock
        self._timeout = timeout
        self._min_bytes = min_bytes
        self._since = clock()
        self._got = 0

    def saw(self, size: int, url: str) -> None:
        """Count ``size`` bytes that arrived. Raises SlowRetrievalError on a stall."""
        self._got += size
        now = self._clock()
        if now - self._since < self._timeout:
            return
        if self._got < self._min_bytes:
            raise exceptions.SlowRetrievalError(
                f"{url} stalled: {self._got} bytes in {now - self._since:.0f} s, fewer than "
                f"{self._min_bytes} (download.stall_timeout = {self._timeout:g} s)")
        self._since, self._got = now, 0


@dataclass(slots=True)
class _Cursor:
    """Where the next byte of the body lands in the file being downloaded."""

    offset: int


class HttpxFetcher(FetcherInterface):
    """python-tuf's fetcher on httpx: timeouts, deadline, retries, resume, bandwidth cap.

    Seams, each with a default when ``None``: ``client`` (or just its ``transport``),
    ``clock`` (monotonic seconds), ``sleep`` and ``rng`` (backoff jitter). Artifacts
    whose URL starts with ``resume_prefix`` are downloaded into ``partial_dir`` and
    resumed; everything else (metadata) goes to an anonymous temporary file.

    The default client honours proxy settings from the environment (``HTTPS_PROXY``,
    ``NO_PROXY``...) and ``SSL_CERT_FILE``/``SSL_CERT_DIR``, verifies TLS certificates
    and follows redirects (every byte is verified by python-tuf, so a mirror or CDN
    needs no trust).
    """

    def __init__(self, settings: FetchSettings | None = None, *,
                 partial_dir: Path | None = None, resume_prefix: str | None = None,
                 client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None,
                 clock: Clock | None = None, sleep: Sleep | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings or FetchSettings()
        self._partial_dir = partial_dir
        self._resume_prefix = resume_prefix
        self._owns_client = client is None
        self._client = client or httpx.Client(transport=transport, trust_env=True, verify=True,
                                              follow_redirects=True)
        if self.settings.url_check is not None:
            _check_every_request(self._client, self.settings.url_check)
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep
        self._rng = rng or random.Random()
        self.budget = RetryBudget(self.settings.retry_budget, self.settings.retry_refill)
        rate = self.settings.rate_limit
        self._bucket = TokenBucket(rate, self._clock) if rate else None
        self._progress: Progress | None = None
        self._tee: Tee | None = None

    def close(self) -> None:
        """Close the HTTP client if this fetcher made it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpxFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def reporting(self, progress: Progress | None) -> Iterator[None]:
        """Report the downloads made inside the ``with`` block to ``progress``."""
        previous, self._progress = self._progress, progress
        try:
            yield
        finally:
            self._progress = previous

    @contextlib.contextmanager
    def teeing(self, tee: Tee | None) -> Iterator[None]:
        """Hand every chunk of the artifacts downloaded in the block to ``tee`` too."""
        previous, self._tee = self._tee, tee
        try:
            yield
        finally:
            self._tee = previous

    def partial_path(self, url: str) -> Path | None:
        """The ``.part`` file a download of ``url`` resumes from, or ``None`` if it
        is not a resumable (artifact) URL."""
        if self._partial_dir is None or self._resume_prefix is None:
            return None
        if not url.startswith(self._resume_prefix):
            return None
        return self._partial_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.part"

    # -- python-tuf's interface --------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        """The body of ``url`` (python-tuf's ``fetch``); retried and resumed in memory.

        Raises (while iterating):
            DownloadHTTPError: an HTTP error status, after retries for 5xx/408/429.
            SlowRetrievalError: the overall deadline passed.
            DownloadError: the transport failed, after retries.
        """
        return _contiguous(self._chunks(url, 0, None))

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Download ``url`` (at most ``max_length`` bytes) and yield it as an open file.

        Artifacts are kept in their ``.part`` file, resumed if one exists. The ``.part``
        is deleted when the ``with`` block ends, normally or by an exception (python-tuf
        raises there when the file fails verification); it is kept, for the next try,
        only when the transfer itself failed.

        Raises:
            DownloadLengthMismatchError: the body is longer than ``max_length``.
            DownloadHTTPError: an HTTP error status, after retries for 5xx/408/429.
            SlowRetrievalError: the overall deadline passed.
            DownloadError: the transport failed, after retries.
            OSError: the local disk refused.
        """
        part = self.partial_path(url)
        if part is None:
            with tempfile.TemporaryFile() as temp:
                self._download_into(temp, url, max_length)
                temp.seek(0)
                yield temp
            return
        with self._resumable(part, url, max_length) as file:
            yield file

    # -- resumable artifacts -----------------------------------------------------------

    @contextlib.contextmanager
    def _resumable(self, part: Path, url: str, max_length: int) -> Iterator[IO[bytes]]:
        part.parent.mkdir(parents=True, exist_ok=True)
        file = os.fdopen(os.open(part, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
        discard = True
        try:
            try:
                self._download_into(file, url, max_length)
            except exceptions.DownloadLengthMismatchError:
                raise
            except BaseException as e:
                # Keep what arrived, for the next try to resume, unless the disk is full:
                # then the .part is what fills it.
                discard = _disk_full(e) or file.tell() == 0
                raise
            file.seek(0)
            try:
                yield file
            except BaseException as e:
                # python-tuf rejected it (or failed using it): never resume from it.
                # An interrupt (KeyboardInterrupt) says nothing about the bytes.
                discard = isinstance(e, Exception)
                raise
        finally:
            try:
                file.close()  # flushes: may be where the full disk shows
            except OSError as e:
                discard = discard or _disk_full(e)
                raise
            finally:
                if discard:
                    part.unlink(missing_ok=True)

    def _download_into(self, file: IO[bytes], url: str, max_length: int) -> None:
        file.seek(0, os.SEEK_END)
        start = file.tell()
        if start > max_length:
            file.seek(0)
            file.truncate()
            start = 0
        report, tee = self._progress, self._tee
        if report:
            report(start, max_length)
        if 0 < start == max_length:
            logger.debug("%s is already complete in its .part file", url)
            return
        for offset, data in self._chunks(url, start, max_length):
            if offset != file.tell():
                file.seek(offset)
                file.truncate()
            file.write(data)
            if tee:
                tee(offset, data)
            if report:
                report(offset + len(data), max_length)
        file.flush()

    # -- attempts, retries, deadline ---------------------------------------------------

    def _chunks(self, url: str, start: int, max_length: int | None
                ) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` pairs of the body from ``start``; an offset that goes back
        to 0 means the server restarted the body and what was before must be dropped."""
        deadline = self._clock() + self.settings.deadline
        cursor = _Cursor(start)
        attempt = 1
        while True:
            try:
                yield from self._attempt(url, cursor, max_length, deadline)
            except _Retryable as retry:
                self._pause_before_retry(url, attempt, retry, deadline)
                attempt += 1
            else:
                self.budget.earn()
                return

    def _pause_before_retry(self, url: str, attempt: int, retry: _Retryable,
                            deadline: float) -> None:
        settings = self.settings
        if attempt >= settings.max_attempts or not self.budget.try_spend():
            raise retry.error
        delay = 0.0 if retry.immediate else backoff_delay(
            attempt, settings.backoff_base, settings.backoff_cap, self._rng)
        if retry.retry_after is not None:
            delay = max(delay, retry.retry_after)
        if self._clock() + delay >= deadline:
            raise retry.error
        logger.info("retrying %s in %.1f s (attempt %d failed: %s)", url, delay, attempt,
                    retry.error)
        self._sleep(delay)

    def _check_deadline(self, url: str, deadline: float) -> float:
        """Seconds left before ``deadline``; raises SlowRetrievalError when none are."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise self._too_slow(url)
        return remaining

    def _too_slow(self, url: str) -> exceptions.SlowRetrievalError:
        return exceptions.SlowRetrievalError(
            f"{url} did not download within its {self.settings.deadline:g} s deadline")

    def _attempt(self, url: str, cursor: _Cursor, max_length: int | None,
                 deadline: float) -> Iterator[tuple[int, bytes]]:
        remaining = self._check_deadline(url, deadline)
        try:
            with self._client.stream("GET", url, headers=self._headers(cursor.offset),
                                     timeout=self._timeout(remaining)) as response:
                self._accept(url, response, cursor, max_length)
                stall = _StallWatch(self._clock, self.settings.stall_timeout,
                                    self.settings.stall_bytes)
                # No chunk_size: bytes are passed on as they arrive, so a cut loses
                # nothing that was received.
                for data in response.iter_bytes():
                    if max_length is not None and cursor.offset + len(data) > max_length:
                        raise exceptions.DownloadLengthMismatchError(
                            f"{url} is longer than the {max_length} bytes expected")
                    offset = cursor.offset
                    cursor.offset += len(data)
                    yield offset, data
                    self._throttle(len(data))
                    self._check_deadline(url, deadline)
                    stall.saw(len(data), url)
        except httpx.TimeoutException as e:
            if self._clock() >= deadline:
                raise self._too_slow(url) from e
            raise _retryable(f"{url}: timed out ({type(e).__name__})", e) from e
        except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
            raise _retryable(f"{url}: {_describe(e)}", e) from e
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as e:
            raise exceptions.DownloadError(f"{url}: {_describe(e)}") from e

    def _headers(self, offset: int) -> dict[str, str]:
        # identity: byte offsets must be those of the file, not of a compressed body
        headers = {"User-Agent": self.settings.user_agent, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        return headers

    def _timeout(self, remaining: float) -> httpx.Timeout:
        settings = self.settings
        read = min(settings.read_timeout, remaining)
        return httpx.Timeout(read, connect=min(settings.connect_timeout, remaining))

    def _throttle(self, size: int) -> None:
        if self._bucket is not None:
            delay = self._bucket.delay_for(size)
            if delay > 0:
                self._sleep(delay)

    def _accept(self, url: str, response: httpx.Response, cursor: _Cursor,
                max_length: int | None) -> None:
        """Check the status and headers; move ``cursor`` to where the body starts."""
        status = response.status_code
        if status >= 500 or status in (408, 429):
            wait = retry_after_seconds(response.headers.get("Retry-After"), datetime.now(UTC))
            error = exceptions.DownloadHTTPError(f"HTTP {status} from {url}", status)
            raise _Retryable(error, retry_after=wait)
        if status == 416 and cursor.offset:
            cursor.offset = 0
            raise _retryable(f"{url}: the server cannot resume (HTTP 416)", immediate=True)
        if not 200 <= status < 300:
            raise exceptions.DownloadHTTPError(f"HTTP {status} from {url}", status)
        if status == 206:
            self._accept_range(url, response, cursor)
        elif cursor.offset:
            logger.info("%s: the server ignored Range; starting over", url)
            cursor.offset = 0
        declared = response.headers.get("Content-Length")
        if max_length is not None and declared and declared.isdigit() \
                and cursor.offset + int(declared) > max_length:
            raise exceptions.DownloadLengthMismatchError(
                f"{url} is {cursor.offset + int(declared)} bytes, more than the "
                f"{max_length} expected")

    @staticmethod
    def _accept_range(url: str, response: httpx.Response, cursor: _Cursor) -> None:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != cursor.offset:
            cursor.offset = 0
            raise _retryable(f"{url}: the server sent another range than asked for",
                             immediate=True)


def _check_every_request(client: httpx.Client, check: Callable[[str], None]) -> None:
    """Run ``check`` on each request ``client`` sends: httpx calls request hooks once per
    hop of a redirect chain (at most ``max_redirects``), before the hop is sent."""
    def hook(request: httpx.Request) -> None:
        check(str(request.url))

    client.event_hooks["request"].append(hook)


def _contiguous(chunks: Iterator[tuple[int, bytes]]) -> Iterator[bytes]:
    """The body as one stream: bytes sent again after a restart are dropped."""
    position = 0
    for offset, data in chunks:
        skip = position - offset
        if skip < len(data):
            yield data[skip:]
            position = offset + len(data)


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
