"""The trust layer against real HTTP on loopback: the fetcher's behaviours one by one,
and the attacks a device must survive, each refused with the right fleetup error and
nothing left behind that could pass for verified.

The static host (``tests.support.http``) serves a real repository built with
``fleetup.repository``; a small scripted server stands in where a static host never
misbehaves on cue (5xx with Retry-After, stalls, cut bodies, ignored Range, a proxy).
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import JSONSerializer

from fleetup.agent._fetcher import FetchSettings, HttpxFetcher
from fleetup.agent._trust import TufReleaseSource
from fleetup.errors import (
    DeadlineExceededError,
    HTTPStatusError,
    IntegrityError,
    NetworkError,
    RollbackAttackError,
    TrustError,
)
from fleetup.repository import (
    ReleaseRequest,
    add_release,
    init_repo,
    open_repository,
    rotate_key,
)
from tests.support.http import StaticServer, serve_directory

APP, PLATFORM = "hello", "linux-x86_64"
PAYLOAD = random.Random(5).randbytes(300_000)  # incompressible: archives are ~300 kB


# -- repositories ----------------------------------------------------------------------


def publish(repo: Path, work: Path, version: str, now: datetime | None = None) -> None:
    src = work / f"src-{version}"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(PAYLOAD + version.encode())
    add_release(repo, ReleaseRequest(src=src, app=APP, version=version, platform=PLATFORM),
                now=now)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pristine")
    init_repo(work / "repo")
    for version in ("1.0.0", "2.0.0"):
        publish(work / "repo", work, version)
    return work / "repo"


@pytest.fixture
def repo(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the published repository that a test may attack."""
    return Path(shutil.copytree(pristine, tmp_path / "repo"))


def archive_of(repo: Path, version: str) -> Path:
    found, = (repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-{version}.tar.zst")
    return found


def metadata_file(repo: Path, role: str) -> Path:
    versions = [int(p.name.split(".")[0])
                for p in (repo / "public/metadata").glob(f"*.{role}.json")]
    return repo / "public/metadata" / f"{max(versions)}.{role}.json"


def resign_with_a_rogue_key(path: Path) -> None:
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())
    path.write_bytes(md.to_bytes(JSONSerializer(compact=False)))


# -- devices ---------------------------------------------------------------------------


class Device:
    """What an agent keeps between runs: its trusted metadata and its downloads."""

    def __init__(self, root: Path, repo: Path) -> None:
        self.root = root
        self.trusted_root = root / "shipped-root.json"
        root.mkdir()
        shutil.copyfile(repo / "public/metadata" / "1.root.json", self.trusted_root)

    @property
    def tuf(self) -> Path:
        return self.root / ".fleetup" / "tuf"

    @property
    def downloads(self) -> Path:
        return self.root / ".fleetup" / "downloads"

    def source(self, server: StaticServer | str, *, transport: httpx.BaseTransport | None = None,
               **settings: object) -> TufReleaseSource:
        url = server if isinstance(server, str) else server.url
        fetcher = HttpxFetcher(
            FetchSettings(**{"backoff_base": 0.05, "max_attempts": 2, **settings}),  # type: ignore[arg-type]
            partial_dir=self.downloads, resume_prefix=f"{url}targets/", transport=transport)
        return TufReleaseSource(self.tuf, self.downloads, url, self.trusted_root, fetcher)

    def trusted_version(self, role: str) -> int:
        return Metadata.from_bytes((self.tuf / f"{role}.json").read_bytes()).signed.version

    def assert_nothing_unverified(self, dest: Path) -> None:
        """Nothing at ``dest`` nor beside it: only a ``.part`` may remain, for a resume."""
        assert not dest.exists()
        assert [p.name for p in dest.parent.iterdir() if p.suffix != ".part"
                and p.name != "index"] == []


@pytest.fixture
def device(tmp_path: Path, repo: Path) -> Device:
    return Device(tmp_path / "device", repo)


@pytest.fixture
def served(repo: Path, tmp_path: Path) -> Iterator[StaticServer]:
    with serve_directory(repo / "public", tmp_path) as server:
        yield server


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text
    assert "\n" not in text
    return text


def newest(source: TufReleaseSource) -> tuple[str, Path]:
    facts = source.releases(APP, PLATFORM)[-1]
    return facts.target_path, source.downloads_dir / f"{APP}-{facts.version}.tar.zst"


# -- the normal path ---------------------------------------------------------------------


def test_a_device_discovers_and_downloads_verified_releases(
        device: Device, served: StaticServer, repo: Path) -> None:
    source = device.source(served)
    source.refresh()
    assert [f.version for f in source.releases(APP, PLATFORM)] == ["1.0.0", "2.0.0"]
    delta = source.delta(APP, PLATFORM, "1.0.0", "2.0.0")
    assert delta is not None
    assert delta[1] < source.release_length(source.releases(APP, PLATFORM)[-1])
    seen: list[int] = []
    target, dest = newest(source)
    source.download(target, dest, lambda done, _total: seen.append(done))
    assert dest.read_bytes() == archive_of(repo, "2.0.0").read_bytes()
    assert seen[-1] == dest.stat().st_size
    assert list(device.downloads.glob("*.part")) == []

    # The next run trusts what the device already holds: the shipped root is not needed.
    device.trusted_root.unlink()
    again = device.source(served)
    again.refresh()
    assert again.facts_for(APP, PLATFORM, "2.0") is not None


def test_a_device_follows_key_rotations(device: Device, served: StaticServer,
                                        repo: Path) -> None:
    device.source(served).refresh()
    rotate_key(repo, "root")
    rotate_key(repo, "timestamp")
    source = device.source(served)
    source.refresh()
    assert device.trusted_version("root") == 3
    assert len(source.releases(APP, PLATFORM)) == 2


# -- attacks on artifacts -----------------------------------------------------------------


def attack_artifact(device: Device, served: StaticServer, change: Callable[[Path], None],
                    repo: Path) -> IntegrityError:
    source = device.source(served)
    target, dest = newest(source)
    change(archive_of(repo, "2.0.0"))
    with pytest.raises(IntegrityError) as caught:
        source.download(target, dest)
    assert one_line(caught.value).startswith(f"download {target}: ")
    device.assert_nothing_unverified(dest)
    assert list(device.downloads.glob("*.part")) == []
    return caught.value


def test_a_tampered_artifact_is_refused(device: Device, served: StaticServer,
                                        repo: Path) -> None:
    def flip_a_byte(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    assert "hash" in str(attack_artifact(device, served, flip_a_byte, repo)).lower()


def test_an_artifact_with_junk_appended_is_refused(device: Device, served: StaticServer,
                                                   repo: Path) -> None:
    def append_junk(path: Path) -> None:
        with path.open("ab") as f:
            f.write(b"#!/bin/sh\nrm -rf /\n")

    attack_artifact(device, served, append_junk, repo)


def test_an_artifact_swapped_for_an_older_signed_one_is_refused(
        device: Device, served: StaticServer, repo: Path) -> None:
    older = archive_of(repo, "1.0.0").read_bytes()
    attack_artifact(device, served, lambda path: path.write_bytes(older), repo)


def test_a_huge_artifact_is_cut_at_its_signed_length(device: Device, served: StaticServer,
                                                     repo: Path) -> None:
    def inflate(path: Path) -> None:
        path.write_bytes(path.read_bytes() * 20)

    assert "more than the" in str(attack_artifact(device, served, inflate, repo))


def test_an_artifact_missing_on_the_server_is_an_http_error(
        device: Device, served: StaticServer, repo: Path) -> None:
    source = device.source(served)
    target, dest = newest(source)
    archive_of(repo, "2.0.0").unlink()
    with pytest.raises(HTTPStatusError) as caught:
        source.download(target, dest)
    assert caught.value.status_code == 404
    assert not caught.value.retryable
    assert "HTTP 404" in one_line(caught.value)
    device.assert_nothing_unverified(dest)
    assert list(device.downloads.glob("*.part")) == []


# -- attacks on metadata ----------------------------------------------------------------------


def test_a_replayed_older_timestamp_is_refused(device: Device, served: StaticServer,
                                               repo: Path, tmp_path: Path) -> None:
    old = (repo / "public/metadata" / "timestamp.json").read_bytes()
    publish(repo, tmp_path, "3.0.0")
    device.source(served).refresh()
    seen = device.trusted_version("timestamp")
    (repo / "public/metadata" / "timestamp.json").write_bytes(old)
    with pytest.raises(RollbackAttackError) as caught:
        device.source(served).refresh()
    assert "timestamp version" in one_line(caught.value)
    assert device.trusted_version("timestamp") == seen


def test_a_signed_timestamp_pointing_to_an_older_snapshot_is_refused(
        device: Device, served: StaticServer, repo: Path) -> None:
    device.source(served).refresh()
    seen = device.trusted_version("snapshot")
    publisher = open_repository(repo, ["timestamp"], None)
    with publisher.edit_timestamp() as timestamp:
        timestamp.snapshot_meta = MetaFile(version=seen - 1)
    publisher.commit()
    with pytest.raises(RollbackAttackError) as caught:
        device.source(served).refresh()
    assert "snapshot version" in one_line(caught.value)
    assert device.trusted_version("snapshot") == seen


def test_a_signed_snapshot_listing_older_targets_is_refused(
        device: Device, served: StaticServer, repo: Path) -> None:
    device.source(served).refresh()
    seen = device.trusted_version("targets")
    publisher = open_repository(repo, ["snapshot", "timestamp"], None)
    with publisher.edit_snapshot() as snapshot:
        snapshot.meta["targets.json"] = MetaFile(version=seen - 1)
    publisher.do_timestamp(force=True)
    publisher.commit()
    with pytest.raises(RollbackAttackError) as caught:
        device.source(served).refresh()
    one_line(caught.value)
    assert device.trusted_version("targets") == seen


@pytest.mark.parametrize(("role", "age", "resign"), [
    ("timestamp", 2, ()),
    ("snapshot", 10, ("timestamp",)),
    ("targets", 100, ("snapshot", "timestamp")),
])
def test_expired_metadata_is_refused_naming_role_and_date(
        tmp_path: Path, role: str, age: int, resign: tuple[str, ...]) -> None:
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=age)
    repo = tmp_path / "repo"
    init_repo(repo, now=past)
    publish(repo, tmp_path, "1.0.0", now=past)
    if resign:
        publisher = open_repository(repo, list(resign), None)
        if "snapshot" in resign:
            publisher.do_snapshot(force=True)
        publisher.do_timestamp(force=True)
        publisher.commit()
    expires = past + timedelta(days={"timestamp": 1, "snapshot": 7, "targets": 90}[role])
    device = Device(tmp_path / "device", repo)
    with serve_directory(repo / "public", tmp_path) as server, pytest.raises(TrustError) as caught:
        device.source(server).refresh()
    assert f"the repository's {role} metadata expired at " \
           f"{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}" in one_line(caught.value)
    assert not (device.tuf / f"{role}.json").exists()


@pytest.mark.parametrize("role", ["timestamp", "targets"])
def test_metadata_signed_by_a_key_not_in_root_is_refused(device: Device, served: StaticServer,
                                                         repo: Path, role: str) -> None:
    path = repo / "public/metadata" / "timestamp.json" if role == "timestamp" \
        else metadata_file(repo, role)
    resign_with_a_rogue_key(path)
    with pytest.raises(TrustError, match="bad signature") as caught:
        device.source(served).refresh()
    assert type(caught.value) is TrustError
    assert f"{role} was signed by 0/1 keys" in one_line(caught.value)
    assert not (device.tuf / f"{role}.json").exists()


def test_huge_metadata_is_cut_at_its_length_cap(device: Device, served: StaticServer,
                                                repo: Path) -> None:
    device.source(served).refresh()
    trusted = (device.tuf / "timestamp.json").read_bytes()
    (repo / "public/metadata" / "timestamp.json").write_bytes(b"{" + b" " * 5_000_000 + b"}")
    with pytest.raises(IntegrityError) as caught:
        device.source(served).refresh()
    assert "timestamp.json" in one_line(caught.value)
    assert (device.tuf / "timestamp.json").read_bytes() == trusted


# -- slow, cut and resumed downloads ------------------------------------------------------


def test_a_server_slower_than_the_deadline_is_given_up(device: Device, repo: Path,
                                                       tmp_path: Path) -> None:
    with serve_directory(repo / "public", tmp_path, rate=60_000) as slow:
        source = device.source(slow, deadline=1.5)
        target, dest = newest(source)
        with pytest.raises(DeadlineExceededError) as caught:
            source.download(target, dest)
    assert "1.5 s deadline" in one_line(caught.value)
    device.assert_nothing_unverified(dest)
    part, = device.downloads.glob("*.part")
    assert part.stat().st_size < archive_of(repo, "2.0.0").stat().st_size


class Counting(httpx.BaseTransport):
    """A real transport that notes each request's Range and the body bytes it got."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, str | None]] = []
        self.received: dict[str, int] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((path, request.headers.get("range")))
        response = self.inner.handle_request(request)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_CountedStream(response.stream, self, path),
                              extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class _CountedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream,
                 owner: Counting, path: str) -> None:
        assert isinstance(inner, httpx.SyncByteStream)
        self.inner, self.owner, self.path = inner, owner, path

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.owner.received[self.path] = self.owner.received.get(self.path, 0) + len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def test_a_download_cut_by_a_dead_server_resumes_after_restart(
        device: Device, repo: Path, tmp_path: Path) -> None:
    server = StaticServer(repo / "public", tmp_path, rate=100_000).start()
    try:
        source = device.source(server)
        target, dest = newest(source)

        def kill_mid_way(done: int, total: int) -> None:
            if done >= total // 5:
                server.kill()

        with pytest.raises(NetworkError) as caught:
            source.download(target, dest, kill_mid_way)
        one_line(caught.value)
        part, = device.downloads.glob("*.part")
        kept = part.stat().st_size
        total = source.release_length(source.releases(APP, PLATFORM)[-1])
        assert 0 < kept < total
        assert not dest.exists()

        server.rate = None
        server.start()
        counting = Counting()
        device.source(server, transport=counting).download(target, dest)
    finally:
        server.stop()
    artifact = archive_of(repo, "2.0.0")
    assert dest.read_bytes() == artifact.read_bytes()
    url_path = f"/targets/{APP}/{PLATFORM}/{artifact.name}"
    assert (url_path, f"bytes={kept}-") in counting.requests
    assert counting.received[url_path] == total - kept
    assert list(device.downloads.glob("*.part")) == []


# -- fetcher behaviours on a scripted loopback server ------------------------------------------


Answer = Callable[[BaseHTTPRequestHandler], None]


def status(code: int, headers: dict[str, str] | None = None) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        for name, value in {**(headers or {}), "Content-Length": "0"}.items():
            handler.send_header(name, value)
        handler.end_headers()
    return answer


def body(data: bytes, *, cut_at: int | None = None, stall: float = 0.0,
         honour_range: bool = False) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(stall)
        start = 0
        wanted = handler.headers.get("Range")
        if honour_range and wanted:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        handler.wfile.write(data[start:cut_at])
        handler.close_connection = True
    return answer


class Scripted:
    """A loopback HTTP server giving the scripted answers in order (the last repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                answer = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


DATA = random.Random(9).randbytes(50_000)


def fetcher_for(server: Scripted, tmp_path: Path, **settings: object) -> HttpxFetcher:
    return HttpxFetcher(
        FetchSettings(**{"backoff_base": 0.01, **settings}),  # type: ignore[arg-type]
        partial_dir=tmp_path / "parts", resume_prefix=f"{server.url}targets/")


def test_real_5xx_with_retry_after_is_retried_after_the_wait(tmp_path: Path) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with Scripted(status(503, {"Retry-After": "1"}), body(DATA)) as server:
        fetcher = HttpxFetcher(FetchSettings(backoff_base=0.01), sleep=sleep)
        assert fetcher.download_bytes(f"{server.url}metadata/x.json", len(DATA)) == DATA
    assert len(server.requests) == 2
    assert slept == [1.0]


def test_real_404_stops_at_once_with_its_status(tmp_path: Path) -> None:
    with Scripted(status(404)) as server:
        fetcher = fetcher_for(server, tmp_path)
        with pytest.raises(exceptions.DownloadHTTPError) as caught:
            fetcher.download_bytes(f"{server.url}metadata/2.root.json", 1000)
    assert caught.value.status_code == 404
    assert len(server.requests) == 1


def test_real_stall_past_the_read_timeout_is_retried(tmp_path: Path) -> None:
    with Scripted(body(DATA, stall=2.0), body(DATA)) as server:
        fetcher = fetcher_for(server, tmp_path, read_timeout=0.3)
        assert fetcher.download_bytes(f"{server.url}metadata/x.json", len(DATA)) == DATA
    assert len(server.requests) == 2


def test_real_cut_body_resumes_with_range(tmp_path: Path) -> None:
    with Scripted(body(DATA, cut_at=20_000), body(DATA, honour_range=True)) as server:
        url = f"{server.url}targets/a.tar.zst"
        with fetcher_for(server, tmp_path).download_file(url, len(DATA)) as f:
            assert f.read() == DATA
    assert [r for _, r in server.requests] == [None, "bytes=20000-"]
    assert list((tmp_path / "parts").iterdir()) == []


def test_real_server_ignoring_range_makes_it_start_over(tmp_path: Path) -> None:
    with Scripted(body(DATA, cut_at=20_000), body(DATA)) as server:
        url = f"{server.url}targets/a.tar.zst"
        with fetcher_for(server, tmp_path).download_file(url, len(DATA)) as f:
            assert f.read() == DATA
    assert [r for _, r in server.requests] == [None, "bytes=20000-"]


def test_real_connection_refused_is_a_network_error(device: Device, repo: Path,
                                                    tmp_path: Path) -> None:
    server = StaticServer(repo / "public", tmp_path).start()
    server.stop()
    with pytest.raises(NetworkError) as caught:
        device.source(server).refresh()
    assert type(caught.value) is NetworkError
    assert "refused" in one_line(caught.value).lower()


def test_real_bandwidth_cap_paces_the_transfer(tmp_path: Path) -> None:
    class Clock:
        now = 0.0

        def sleep(self, seconds: float) -> None:
            self.now += seconds

    clock = Clock()
    with Scripted(body(DATA)) as server:
        fetcher = HttpxFetcher(FetchSettings(rate_limit=10_000), clock=lambda: clock.now,
                               sleep=clock.sleep)
        assert fetcher.download_bytes(f"{server.url}metadata/x.json", len(DATA)) == DATA
    assert clock.now == pytest.approx((len(DATA) - 10_000) / 10_000)


def test_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with Scripted(body(DATA)) as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with HttpxFetcher() as fetcher:
            got = fetcher.download_bytes("http://repo.invalid/metadata/timestamp.json",
                                         len(DATA))
    assert got == DATA
    assert proxy.requests == [("http://repo.invalid/metadata/timestamp.json", None)]
