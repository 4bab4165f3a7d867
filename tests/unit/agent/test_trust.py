"""TufReleaseSource and the python-tuf error mapping, over a real repository on disk
served through httpx.MockTransport (no sockets)."""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.api.serialization import DeserializationError

from fleetup.agent._config import AgentConfig, DownloadConfig
from fleetup.agent._fetcher import FetchSettings, HttpxFetcher
from fleetup.agent._store import DeviceLayout
from fleetup.agent._trust import (
    RepoEndpoints,
    TufReleaseSource,
    _MetadataNotes,
    fetch_settings,
    map_tuf_error,
    open_updater,
)
from fleetup.errors import (
    ConfigError,
    DeadlineExceededError,
    FleetupError,
    HTTPStatusError,
    IntegrityError,
    NetworkError,
    ReleaseNotFoundError,
    RollbackAttackError,
    StorageError,
    TrustError,
)
from fleetup.repository import ReleaseRequest, add_release, init_repo

BASE = "https://repo.test/"
APP, PLATFORM = "hello", "linux-x86_64"


class RepoServer:
    """A fake static host for a repository directory; ``replace`` serves other bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []
        self.replace: dict[str, bytes | int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.lstrip("/")
        self.paths.append(path)
        for suffix, answer in self.replace.items():
            if path.endswith(suffix):
                return (httpx.Response(answer) if isinstance(answer, int)
                        else httpx.Response(200, content=answer))
        file = self.root / path
        if not file.is_file():
            return httpx.Response(404)
        return httpx.Response(200, content=file.read_bytes())


def publish(repo: Path, work: Path, version: str, *, app: str = APP,
            now: datetime | None = None) -> None:
    src = work / f"src-{app}-{version}"
    (src / "bin").mkdir(parents=True)
    shared = random.Random(app).randbytes(40_000)  # versions differ a little: deltas pay
    (src / "bin" / "app").write_bytes(shared + version.encode() * 100)
    (src / "VERSION").write_text(version)
    add_release(repo, ReleaseRequest(src=src, app=app, version=version, platform=PLATFORM),
                now=now)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("repo")
    path = work / "repo"
    init_repo(path)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        publish(path, work, version)
    publish(path, work, "7.0", app="other")
    return path


Factory = Callable[..., TufReleaseSource]


@pytest.fixture
def server(repo: Path) -> RepoServer:
    return RepoServer(repo / "public")


@pytest.fixture
def make_source(repo: Path, server: RepoServer, tmp_path: Path) -> Factory:
    def make(trusted_root: Path | None = None, **settings: object) -> TufReleaseSource:
        device = tmp_path / "device"
        fetcher = HttpxFetcher(
            FetchSettings(**settings),  # type: ignore[arg-type]
            partial_dir=device / "downloads", resume_prefix=f"{BASE}targets/",
            transport=httpx.MockTransport(server), sleep=lambda _s: None)
        return TufReleaseSource(device / "tuf", device / "downloads", BASE,
                                trusted_root or repo / "public/metadata" / "1.root.json", fetcher)
    return make


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text
    assert "\n" not in text
    return text


# -- the error mapping ------------------------------------------------------------------


MAPPING = [
    (tuf_errors.BadVersionNumberError("New timestamp version 2 must be >= 3"),
     RollbackAttackError, "older than this device already trusts"),
    (tuf_errors.EqualVersionNumberError(), RollbackAttackError, "EqualVersionNumberError"),
    (tuf_errors.UnsignedMetadataError("timestamp was signed by 0/1 keys"), TrustError,
     "bad signature: timestamp was signed by 0/1 keys"),
    (tuf_errors.LengthOrHashMismatchError("Observed hash ab != expected hash cd"),
     IntegrityError, "Observed hash ab"),
    (tuf_errors.DownloadLengthMismatchError("longer than 10 bytes"), IntegrityError,
     "longer than 10 bytes"),
    (tuf_errors.SlowRetrievalError("did not download within its 9 s deadline"),
     DeadlineExceededError, "9 s deadline"),
    (tuf_errors.DownloadError("connection refused"), NetworkError, "connection refused"),
    (tuf_errors.RepositoryError("Role x was delegated but is not part of snapshot"),
     TrustError, "not part of snapshot"),
    (DeserializationError("Failed to\ndeserialize"), TrustError, "Failed to deserialize"),
    (PermissionError(13, "Permission denied", "/x"), StorageError, "permission denied"),
]


@pytest.mark.parametrize(("error", "kind", "words"), MAPPING)
def test_each_tuf_error_maps_to_one_fleetup_error_in_one_line(
        error: Exception, kind: type[FleetupError], words: str) -> None:
    mapped = map_tuf_error(error, "refresh the release metadata")
    assert type(mapped) is kind
    assert "refresh the release metadata: " in one_line(mapped)
    assert words in str(mapped)


def test_an_http_error_keeps_its_status() -> None:
    mapped = map_tuf_error(tuf_errors.DownloadHTTPError("HTTP 503 from u", 503), "download x")
    assert isinstance(mapped, HTTPStatusError)
    assert mapped.status_code == 503
    assert mapped.retryable
    assert str(mapped) == "download x: HTTP 503 from u"


@pytest.mark.parametrize(("message", "role"), [
    ("timestamp.json is expired", "timestamp"), ("snapshot.json is expired", "snapshot"),
    ("New targets is expired", "targets"), ("Final root.json is expired", "root"),
])
def test_expiry_names_the_role_and_its_date(message: str, role: str) -> None:
    dates = {role: "2026-01-02T03:04:05Z"}
    mapped = map_tuf_error(tuf_errors.ExpiredMetadataError(message), "refresh", dates.get)
    assert type(mapped) is TrustError
    assert one_line(mapped) == (f"refresh: the repository's {role} metadata expired at "
                                f"2026-01-02T03:04:05Z; it must be re-signed before this "
                                f"device updates")


def test_expiry_without_a_known_date_still_names_the_role() -> None:
    mapped = map_tuf_error(tuf_errors.ExpiredMetadataError("snapshot.json is expired"), "r")
    assert str(mapped).startswith("r: the repository's snapshot metadata expired; ")
    odd = map_tuf_error(tuf_errors.ExpiredMetadataError("something else"), "r")
    assert str(odd) == "r: expired metadata (something else)"


def test_a_wrapped_download_error_says_why() -> None:
    error = tuf_errors.DownloadError("Failed to download http://x/")
    error.__cause__ = ConnectionRefusedError("connection refused")
    assert str(map_tuf_error(error, "d")) == "d: Failed to download http://x/: connection refused"


def test_metadata_notes_are_kept_by_role_name() -> None:
    fetcher = HttpxFetcher(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, content=request.url.path.encode())))
    notes = _MetadataNotes(fetcher, f"{BASE}metadata/")
    for name in ("timestamp.json", "3.snapshot.json", "5.registry.npmjs.org.json",
                 "2.a%2Fb.json"):
        notes.download_bytes(f"{BASE}metadata/{name}", 100)
    notes.download_bytes(f"{BASE}targets/x.json", 100)
    assert notes.seen == {"timestamp": b"/metadata/timestamp.json",
                          "snapshot": b"/metadata/3.snapshot.json",
                          "registry.npmjs.org": b"/metadata/5.registry.npmjs.org.json",
                          "a/b": b"/metadata/2.a/b.json"}  # httpx decodes the path


# -- endpoints and the Updater set-up -----------------------------------------------------


def test_endpoints_from_a_base_url() -> None:
    assert RepoEndpoints.from_base("http://h:1/repo") == RepoEndpoints(
        "http://h:1/repo/metadata/", "http://h:1/repo/targets/")
    assert RepoEndpoints("http://m", "http://t").targets_url == "http://t/"


def test_the_shipped_root_is_used_only_until_the_device_has_its_own(
        repo: Path, tmp_path: Path) -> None:
    fetcher = HttpxFetcher(transport=httpx.MockTransport(RepoServer(repo / "public")))
    endpoints = RepoEndpoints.from_base(BASE)
    metadata = tmp_path / "tuf"
    open_updater(metadata, endpoints, repo / "public/metadata" / "1.root.json", fetcher)
    assert (metadata / "root.json").is_file()
    # from now on the shipped root is not even read
    open_updater(metadata, endpoints, tmp_path / "gone.json", fetcher).refresh()


def test_a_missing_shipped_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the trusted root"):
        open_updater(tmp_path / "tuf", RepoEndpoints.from_base(BASE), tmp_path / "no.json",
                     HttpxFetcher())


def test_an_invalid_shipped_root_is_a_trust_error(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text('{"signed": {}, "signatures": []}')
    with pytest.raises(TrustError) as caught:
        open_updater(tmp_path / "tuf", RepoEndpoints.from_base(BASE), root, HttpxFetcher())
    one_line(caught.value)


def test_settings_come_from_the_download_config() -> None:
    settings = fetch_settings(DownloadConfig(timeout=12, deadline=99, retries=2, backoff=0.25,
                                             max_backoff=8, bandwidth=5000))
    assert (settings.read_timeout, settings.connect_timeout, settings.deadline,
            settings.max_attempts, settings.backoff_base, settings.backoff_cap,
            settings.rate_limit) == (12, 12, 99, 3, 0.25, 8, 5000)
    assert fetch_settings(DownloadConfig(bandwidth=0)).rate_limit is None


def test_from_config_uses_the_device_layout(tmp_path: Path) -> None:
    config = AgentConfig(app=APP, root=tmp_path, trusted_root=tmp_path / "root.json",
                         repo_url="http://h/r/", download=DownloadConfig(deadline=77))
    with TufReleaseSource.from_config(config, DeviceLayout(tmp_path)) as source:
        assert source.metadata_dir == tmp_path / ".fleetup" / "tuf"
        assert source.downloads_dir == tmp_path / ".fleetup" / "downloads"
        assert source.endpoints.targets_url == "http://h/r/targets/"
        assert source.fetcher.settings.deadline == 77
        url = "http://h/r/targets/a/b.tar.zst"
        assert source.fetcher.partial_path(url) == source.downloads_dir / (
            hashlib.sha256(url.encode()).hexdigest() + ".part")
    with pytest.raises(ConfigError):
        TufReleaseSource.from_config(AgentConfig(app=APP, root=tmp_path,
                                                 trusted_root=tmp_path), DeviceLayout(tmp_path))


# -- discovery ---------------------------------------------------------------------------


def test_releases_come_from_the_signed_index_oldest_first(make_source: Factory) -> None:
    source = make_source()
    assert [f.version for f in source.releases(APP, PLATFORM)] == ["1.0.0", "1.1.0", "1.2.0"]
    assert [f.version for f in source.releases("other", PLATFORM)] == ["7.0"]
    assert source.releases(APP, "windows-arm64") == []
    assert source.releases("nobody", PLATFORM) == []


def test_facts_for_compares_versions_by_pep440(make_source: Factory) -> None:
    source = make_source()
    facts = source.facts_for(APP, PLATFORM, "1.1")
    assert facts is not None
    assert facts.version == "1.1.0"
    assert source.facts_for(APP, PLATFORM, "9.9.9") is None


def test_deltas_are_found_by_name_with_their_length(make_source: Factory) -> None:
    source = make_source()
    found = source.delta(APP, PLATFORM, "1.1.0", "1.2.0")
    assert found is not None
    facts, length = found
    assert (facts.from_version, facts.to_version) == ("1.1.0", "1.2.0")
    assert facts.release_target == f"{APP}/{PLATFORM}/{APP}-1.2.0.tar.zst"
    newest = source.releases(APP, PLATFORM)[-1]
    assert length < source.release_length(newest)
    assert source.delta(APP, PLATFORM, "0.1", "1.2.0") is None


def test_release_length_is_the_signed_length(make_source: Factory, repo: Path) -> None:
    source = make_source()
    newest = source.releases(APP, PLATFORM)[-1]
    archive, = (repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-1.2.0.tar.zst")
    assert source.release_length(newest) == archive.stat().st_size


def test_each_refresh_is_a_new_cycle_and_lookups_refresh_once_by_themselves(
        make_source: Factory, server: RepoServer) -> None:
    source = make_source()
    source.releases(APP, PLATFORM)
    source.releases(APP, PLATFORM)
    assert server.paths.count("metadata/timestamp.json") == 1
    source.refresh()
    source.refresh()
    assert server.paths.count("metadata/timestamp.json") == 3


# -- downloads ---------------------------------------------------------------------------


def test_a_download_is_verified_and_reported(make_source: Factory, repo: Path,
                                             tmp_path: Path) -> None:
    source = make_source()
    facts = source.releases(APP, PLATFORM)[-1]
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "out" / "hello.tar.zst"
    assert source.download(facts.target_path, dest, lambda d, t: seen.append((d, t))) == dest
    archive, = (repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-1.2.0.tar.zst")
    assert dest.read_bytes() == archive.read_bytes()
    assert seen[-1] == (dest.stat().st_size, dest.stat().st_size)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["hello.tar.zst"]
    assert not list((source.downloads_dir).glob("*.part"))


def test_a_verified_file_already_in_place_is_not_downloaded_again(
        make_source: Factory, server: RepoServer, tmp_path: Path) -> None:
    source = make_source()
    facts = source.releases(APP, PLATFORM)[0]
    dest = tmp_path / "a.tar.zst"
    source.download(facts.target_path, dest)
    before = len(server.paths)
    source.download(facts.target_path, dest)
    assert len(server.paths) == before


def test_an_unknown_target_is_not_found(make_source: Factory, tmp_path: Path) -> None:
    with pytest.raises(ReleaseNotFoundError, match="not a signed target"):
        make_source().download("hello/x/none.tar.zst", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_tampered_artifact_leaves_nothing_behind(make_source: Factory, server: RepoServer,
                                                   tmp_path: Path) -> None:
    source = make_source()
    facts = source.releases(APP, PLATFORM)[-1]
    length = source.release_length(facts)
    server.replace[f"{APP}-1.2.0.tar.zst"] = b"x" * length
    dest = tmp_path / "out" / "hello.tar.zst"
    with pytest.raises(IntegrityError) as caught:
        source.download(facts.target_path, dest)
    assert one_line(caught.value).startswith(f"download {facts.target_path}: ")
    assert list(dest.parent.iterdir()) == []
    assert not list(source.downloads_dir.glob("*.part"))


def test_an_http_error_on_metadata_maps_with_its_status(make_source: Factory,
                                                        server: RepoServer) -> None:
    server.replace["metadata/timestamp.json"] = 503
    with pytest.raises(HTTPStatusError) as caught:
        make_source(max_attempts=2).refresh()
    assert caught.value.status_code == 503
    assert "refresh the release metadata from https://repo.test/metadata/" in one_line(
        caught.value)


def test_expired_metadata_names_role_and_date(tmp_path: Path) -> None:
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    path = tmp_path / "repo"
    init_repo(path, now=past)
    publish(path, tmp_path, "1.0", now=past)
    fetcher = HttpxFetcher(transport=httpx.MockTransport(RepoServer(path / "public")))
    source = TufReleaseSource(tmp_path / "tuf", tmp_path / "dl", BASE,
                              path / "public/metadata" / "1.root.json", fetcher)
    with pytest.raises(TrustError) as caught:
        source.refresh()
    expires = (past + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"the repository's timestamp metadata expired at {expires}" in one_line(
        caught.value)
    assert not (tmp_path / "tuf" / "timestamp.json").exists()


def test_an_artifact_is_hashed_as_it_arrives_and_not_read_again(
        make_source: Factory, repo: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # python-tuf's download_target hashed the file again and copied it: a second and a
    # third pass over every byte of a release.
    source = make_source()
    facts = source.releases(APP, PLATFORM)[-1]

    def reread(*_args: object) -> None:
        raise AssertionError("the file was read again to hash it")

    monkeypatch.setattr(TargetFile, "verify_length_and_hashes", reread)
    monkeypatch.setattr(shutil, "copyfileobj", reread)
    dest = tmp_path / "out" / "hello.tar.zst"
    source.download(facts.target_path, dest)
    archive, = (repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-1.2.0.tar.zst")
    assert dest.read_bytes() == archive.read_bytes()
    assert not list(source.downloads_dir.glob("*.part"))


@pytest.mark.parametrize("prefix_ok", [True, False])
def test_an_artifact_already_in_its_part_file_is_verified_whole(
        make_source: Factory, repo: Path, tmp_path: Path, prefix_ok: bool) -> None:
    # No byte arrives in this run, so none was hashed on the way: the file is.
    source = make_source()
    facts = source.releases(APP, PLATFORM)[-1]
    archive, = (repo / "public/targets" / APP / PLATFORM).glob(f"*.{APP}-1.2.0.tar.zst")
    data = archive.read_bytes()
    url = f"{BASE}targets/{APP}/{PLATFORM}/{archive.name}"
    part = source.fetcher.partial_path(url)
    assert part is not None
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data if prefix_ok else b"x" * len(data))  # from an earlier run
    dest = tmp_path / "out" / "hello.tar.zst"
    if prefix_ok:
        source.download(facts.target_path, dest)
        assert dest.read_bytes() == data
    else:
        with pytest.raises(IntegrityError):
            source.download(facts.target_path, dest)
        assert not dest.exists()
    assert not part.exists()
