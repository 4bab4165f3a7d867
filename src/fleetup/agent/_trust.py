"""The agent's trust layer: releases are found and downloaded only through python-tuf.

This is the one place where a device decides what to believe, so it exists to keep
four promises:

- **The shipped root is trusted once.** The first run bootstraps python-tuf from the
  ``trusted_root`` file; every later run starts from the metadata the device already
  trusts under ``<root>/.fleetup/tuf`` (``bootstrap=None``), so replayed or older
  metadata is refused, never trusted again (:func:`open_updater`).
- **Discovery uses python-tuf's public API only.** The signed index target
  ``<app>/<platform>/index.json`` lists the releases; each is looked up with
  ``Updater.get_targetinfo`` and its facts parsed from the signed ``custom`` field.
- **python-tuf's exceptions become fleetup's exactly once, here**
  (:func:`map_tuf_error`), each as one line a person can act on.
- **Nothing unverified ever sits at a destination path.** python-tuf writes a verified
  copy to a hidden temporary name next to ``dest``; it is fsynced and renamed into place.

python-tuf allows one ``refresh()`` per ``Updater``: :meth:`TufReleaseSource.refresh`
starts each agent cycle with a fresh one. python-tuf's ``download_target`` re-reads a
downloaded file to hash it and then copies it; :meth:`TufReleaseSource.download` instead
hashes the bytes as they arrive, checks them against the target's signed length and
hashes before anything uses them, and renames the verified ``.part`` into place (callers
only ever see a verified path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import quote, unquote, urljoin

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import FetcherInterface, Updater

from fleetup._atomic import fsync_dir, storage_error
from fleetup._facts import (
    DeltaFacts,
    ReleaseFacts,
    delta_target_path,
    index_target_path,
    parse_index,
    release_target_path,
)
from fleetup._versions import parse_version
from fleetup.agent._fetcher import FetchSettings, HttpxFetcher, Progress, Tee
from fleetup.errors import (
    ConfigError,
    DeadlineExceededError,
    FleetupError,
    HTTPStatusError,
    IntegrityError,
    NetworkError,
    ReleaseNotFoundError,
    RepositoryError,
    RollbackAttackError,
    TrustError,
)

if TYPE_CHECKING:
    from fleetup.agent._config import AgentConfig, DownloadConfig
    from fleetup.agent._store import DeviceLayout

__all__ = [
    "RepoEndpoints",
    "TufReleaseSource",
    "fetch_settings",
    "map_tuf_error",
    "open_updater",
]

ExpiryLookup = Callable[[str], str | None]
"""``role -> expiry date`` as written in its metadata, when known."""

_EXPIRED = re.compile(r"^(?:Final |New )?(?P<role>.+?)(?:\.json)? is expired$")


@dataclass(frozen=True, slots=True)
class RepoEndpoints:
    """Where a repository's metadata and artifacts are served; both end with ``/``."""

    metadata_url: str
    targets_url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata_url", _slash(self.metadata_url))
        object.__setattr__(self, "targets_url", _slash(self.targets_url))

    @classmethod
    def from_base(cls, url: str) -> RepoEndpoints:
        """A served fleetup repository: ``<url>/metadata/`` and ``<url>/targets/``."""
        base = _slash(url)
        return cls(urljoin(base, "metadata/"), urljoin(base, "targets/"))


def _slash(url: str) -> str:
    return url if url.endswith("/") else f"{url}/"


# -- exception mapping ---------------------------------------------------------------


def map_tuf_error(error: Exception, doing: str,
                  expiry_of: ExpiryLookup | None = None) -> FleetupError:
    """The fleetup error for a python-tuf (or OS) error raised while ``doing`` something.

    ======================================  ==========================================
    python-tuf                              fleetup
    ======================================  ==========================================
    ExpiredMetadataError                    TrustError naming the role and its date
    BadVersionNumberError                   RollbackAttackError
    UnsignedMetadataError                   TrustError "bad signature"
    LengthOrHashMismatchError               IntegrityError
    DownloadLengthMismatchError             IntegrityError
    DownloadHTTPError                       HTTPStatusError (with the status)
    SlowRetrievalError                      DeadlineExceededError
    other DownloadError                     NetworkError
    other RepositoryError                   TrustError
    OSError                                 StorageError
    ======================================  ==========================================
    """
    detail = _detail(error)
    if isinstance(error, tuf_errors.ExpiredMetadataError):
        return TrustError(_expired_message(doing, detail, expiry_of))
    if isinstance(error, tuf_errors.BadVersionNumberError):
        return RollbackAttackError(
            f"{doing}: refused metadata older than this device already trusts ({detail})")
    if isinstance(error, tuf_errors.UnsignedMetadataError):
        return TrustError(f"{doing}: bad signature: {detail}")
    if isinstance(error, tuf_errors.LengthOrHashMismatchError
                  | tuf_errors.DownloadLengthMismatchError):
        return IntegrityError(f"{doing}: does not match the signed length and hashes: {detail}")
    if isinstance(error, tuf_errors.DownloadHTTPError):
        return HTTPStatusError(f"{doing}: {detail}", error.status_code)
    if isinstance(error, tuf_errors.SlowRetrievalError):
        return DeadlineExceededError(f"{doing}: {detail}")
    if isinstance(error, tuf_errors.DownloadError):
        return NetworkError(f"{doing}: {detail}")
    if isinstance(error, OSError):
        return storage_error(error, doing)
    return TrustError(f"{doing}: {detail}")


def _detail(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    cause = error.__cause__
    if isinstance(error, tuf_errors.DownloadError) and cause is not None \
            and str(cause) not in text:
        text = f"{text}: {cause}"  # python-tuf's "Failed to download URL" hides why
    return " ".join(text.split())


def _expired_message(doing: str, detail: str, expiry_of: ExpiryLookup | None) -> str:
    match = _EXPIRED.match(detail)
    if match is None:
        return f"{doing}: expired metadata ({detail})"
    role = match.group("role")
    date = expiry_of(role) if expiry_of else None
    when = f" at {date}" if date else ""
    return (f"{doing}: the repository's {role} metadata expired{when}; "
            f"it must be re-signed before this device updates")


def fetch_settings(download: DownloadConfig) -> FetchSettings:
    """The fetcher settings for an agent config's ``[download]`` table.

    Raises:
        UsageError: a setting is out of range.
    """
    return FetchSettings(
        connect_timeout=download.timeout, read_timeout=download.timeout,
        deadline=download.deadline, max_attempts=download.retries + 1,
        backoff_base=download.backoff, backoff_cap=download.max_backoff,
        rate_limit=download.bandwidth or None, stall_timeout=download.stall_timeout,
        stall_bytes=download.stall_bytes,
        url_check=download.hosts.check if download.hosts.active else None)


# -- the Updater set-up --------------------------------------------------------------


def open_updater(metadata_dir: Path, endpoints: RepoEndpoints, trusted_root: Path,
                 fetcher: FetcherInterface) -> Updater:
    """A new python-tuf ``Updater``: bootstrapped from ``trusted_root`` on first use only.

    Once ``<metadata_dir>/root.json`` exists the device's own trusted metadata is the
    anchor, and ``trusted_root`` is not even read.

    Raises:
        ConfigError: ``trusted_root`` is needed and cannot be read.
        TrustError: the trusted root (shipped or cached) is not valid root metadata.
        StorageError: ``metadata_dir`` cannot be created or written.
    """
    doing = f"load the trusted metadata in {metadata_dir}"
    with _mapped_errors(doing):
        metadata_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = None if (metadata_dir / "root.json").exists() else _read_root(trusted_root)
        return Updater(str(metadata_dir), endpoints.metadata_url, None, endpoints.targets_url,
                       fetcher, bootstrap=bootstrap)


def _read_root(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the trusted root {path}: {e.strerror or e}") from e


@contextlib.contextmanager
def _mapped_errors(doing: str, expiry_of: ExpiryLookup | None = None) -> Iterator[None]:
    """Turn python-tuf and OS errors raised in the block into fleetup errors."""
    try:
        yield
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError, OSError) as e:
        raise map_tuf_error(e, doing, expiry_of) from e


class _MetadataNotes(FetcherInterface):
    """The real fetcher, noting the last metadata downloaded for each role.

    python-tuf's "expired" errors name the role but not the date; the notes let the
    error say when it expired.
    """

    def __init__(self, inner: HttpxFetcher, metadata_url: str) -> None:
        self.inner = inner
        self._metadata_url = metadata_url
        self.seen: dict[str, bytes] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.inner.fetch(url)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        with self.inner.download_file(url, max_length) as file:
            yield file

    def download_bytes(self, url: str, max_length: int) -> bytes:
        data = self.inner.download_bytes(url, max_length)
        if url.startswith(self._metadata_url):
            name = unquote(url[len(self._metadata_url):]).removesuffix(".json")
            prefix, _, rest = name.partition(".")
            self.seen[rest if prefix.isdigit() and rest else name] = data
        return data


# -- the release source --------------------------------------------------------------


class TufReleaseSource:
    """The agent's ``ReleaseSource`` (see ``_director``) over a TUF repository.

    Every byte comes through ``tuf.ngclient.Updater``. ``metadata_dir`` holds the
    device's trusted metadata (``<root>/.fleetup/tuf``), ``downloads_dir`` partial
    downloads and the cached release indexes (``<root>/.fleetup/downloads``).
    ``repo_url`` is a served repository's base URL, or :class:`RepoEndpoints` when
    metadata and artifacts live apart. The default fetcher
    is an :class:`HttpxFetcher` with ``settings``, resuming artifacts into
    ``downloads_dir``; a fetcher given instead is used as it is (and not closed by
    :meth:`close`).

    Each :meth:`refresh` starts a cycle with a fresh ``Updater``; the other methods
    refresh once by themselves if no cycle was started. Not thread-safe.
    """

    def __init__(self, metadata_dir: Path, downloads_dir: Path,
                 repo_url: str | RepoEndpoints, trusted_root: Path,
                 fetcher: HttpxFetcher | None = None, *,
                 settings: FetchSettings | None = None) -> None:
        self.metadata_dir = metadata_dir
        self.downloads_dir = downloads_dir
        self.endpoints = (repo_url if isinstance(repo_url, RepoEndpoints)
                          else RepoEndpoints.from_base(repo_url))
        self.trusted_root = trusted_root
        self._owns_fetcher = fetcher is None
        self.fetcher = fetcher or HttpxFetcher(settings, partial_dir=downloads_dir,
                                               resume_prefix=self.endpoints.targets_url)
        self._notes = _MetadataNotes(self.fetcher, self.endpoints.metadata_url)
        self._updater: Updater | None = None
        self._releases: dict[tuple[str, str], list[ReleaseFacts]] = {}

    @classmethod
    def from_config(cls, config: AgentConfig, layout: DeviceLayout) -> TufReleaseSource:
        """The source an agent's config describes: its repository, root of trust, the
        ``[download]`` settings, and the device's ``.fleetup/tuf`` and ``downloads``.

        Raises:
            ConfigError: no ``repo_url`` is configured.
            UsageError: a ``[download]`` setting is out of range.
        """
        if config.repo_url is None:
            raise ConfigError("no repo_url configured: the agent has no release repository")
        return cls(layout.tuf, layout.downloads, config.repo_url, config.trusted_root,
                   settings=fetch_settings(config.download))

    def close(self) -> None:
        """Close the fetcher this source made."""
        if self._owns_fetcher:
            self.fetcher.close()

    def __enter__(self) -> TufReleaseSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- ReleaseSource -----------------------------------------------------------------

    def refresh(self) -> None:
        """Start a cycle: a fresh ``Updater`` loads root, timestamp, snapshot, targets.

        Raises:
            TrustError: metadata is expired (the message names the role and date), badly
                signed, or otherwise fails verification.
            RollbackAttackError: metadata older than what this device trusts was offered.
            IntegrityError: metadata longer than allowed, or not matching its hashes.
            NetworkError: the repository cannot be reached (``HTTPStatusError``,
                ``DeadlineExceededError`` for specific cases).
            ConfigError: the trusted root is needed (first run) and cannot be read.
            StorageError: the trusted metadata cannot be written.
        """
        self._updater = None
        self._releases.clear()
        self._notes.seen.clear()
        updater = open_updater(self.metadata_dir, self.endpoints, self.trusted_root,
                               self._notes)
        with self._mapped(f"refresh the release metadata from {self.endpoints.metadata_url}"):
            updater.refresh()
        self._updater = updater

    def releases(self, app: str, platform: str) -> list[ReleaseFacts]:
        """The signed releases of ``app`` on ``platform``, oldest first (yanked included).

        No index for that app and platform means no releases: an empty list.

        Raises:
            RepositoryError: the index or a release's facts are malformed or inconsistent.
            TrustError, NetworkError, StorageError: as in :meth:`refresh`.
        """
        key = (app, platform)
        if key not in self._releases:
            self._releases[key] = self._load_releases(app, platform)
        return list(self._releases[key])

    def facts_for(self, app: str, platform: str, version: str) -> ReleaseFacts | None:
        """The signed facts of one release (versions compared by PEP 440), or ``None``.

        A release the index does not list is still found by its target name, so a
        fleet server may offer any signed release.

        Raises:
            VersionError: ``version`` is not PEP 440.
            RepositoryError: the index or the release's facts are malformed.
            TrustError, NetworkError, StorageError: as in :meth:`refresh`.
        """
        wanted = parse_version(version)
        for facts in self.releases(app, platform):
            if facts.parsed_version == wanted:
                return facts
        target = self._targetinfo(release_target_path(app, platform, version))
        return None if target is None else _release_facts(target, app, platform)

    def delta(self, app: str, platform: str, from_version: str, to_version: str
              ) -> tuple[DeltaFacts, int] | None:
        """The signed delta patch from one release to another and its length, if any.

        Raises:
            RepositoryError: the delta's facts are malformed or name other releases.
            TrustError, NetworkError, StorageError: as in :meth:`refresh`.
        """
        path = delta_target_path(app, platform, from_version, to_version)
        target = self._targetinfo(path)
        if target is None:
            return None
        facts = DeltaFacts.from_custom(target.custom, path)
        if facts.target_path != path or facts.app != app or facts.platform != platform:
            raise RepositoryError(f"the signed facts of {path} describe another delta")
        return facts, target.length

    def release_length(self, facts: ReleaseFacts) -> int:
        """The signed length in bytes of a release's archive.

        Raises:
            ReleaseNotFoundError: the release is not a signed target (any more).
            TrustError, NetworkError, StorageError: as in :meth:`refresh`.
        """
        return self._require(facts.target_path).length

    def download(self, target_path: str, dest: Path, progress: Progress | None = None,
                 tee: Tee | None = None) -> Path:
        """Download the target ``target_path`` to the file ``dest``, verified; returns ``dest``.

        If ``dest`` already holds the verified target nothing is downloaded. Otherwise
        the artifact is fetched (resuming a partial download), verified by python-tuf,
        fsynced and renamed to ``dest``: on any error ``dest`` is left as it was.
        ``tee`` sees the bytes as they arrive (see ``_fetcher.Tee``); nothing it does
        with them is trusted until this method has returned.

        Raises:
            ReleaseNotFoundError: ``target_path`` is not a signed target.
            IntegrityError: the artifact does not match its signed length and hashes.
            NetworkError: the transfer failed (``HTTPStatusError``, ``DeadlineExceededError``).
            TrustError: metadata needed for the lookup fails verification.
            StorageError: ``dest`` cannot be written.
        """
        target = self._require(target_path)
        updater = self._current()
        doing = f"download {target_path}"
        with self._mapped(doing):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if updater.find_cached_target(target, str(dest)):
                if progress:
                    progress(target.length, target.length)
                return dest
        url = self._target_url(target)
        part = self.fetcher.partial_path(url) if url is not None else None
        if url is None or part is None:
            return self._download_through_updater(updater, target, dest, progress, tee)
        hashing = _StreamHashes(target)
        with self._mapped(doing), self.fetcher.reporting(progress), \
                self.fetcher.teeing(hashing.tee(tee)), \
                self.fetcher.download_file(url, target.length) as file:
            hashing.verify(file)
            _durable_rename(part, dest)
        return dest

    def _download_through_updater(self, updater: Updater, target: TargetFile, dest: Path,
                                  progress: Progress | None, tee: Tee | None) -> Path:
        """python-tuf's own ``download_target``: it hashes the file again and copies it
        (used when the fetcher keeps no ``.part`` to rename)."""
        temp = dest.with_name(f".{dest.name}.verifying")
        try:
            with self._mapped(f"download {target.path}"), self.fetcher.reporting(progress), \
                    self.fetcher.teeing(tee):
                updater.download_target(target, str(temp), self.endpoints.targets_url)
                _durable_rename(temp, dest)
        finally:
            temp.unlink(missing_ok=True)
        return dest

    def _target_url(self, target: TargetFile) -> str | None:
        """The URL python-tuf's ``download_target`` would fetch ``target`` from: hash
        prefixed under consistent snapshots (python-tuf's default), as the trusted root
        python-tuf saved in this cycle says. ``None`` when that root cannot be read."""
        try:
            root = Metadata[Root].from_file(str(self.metadata_dir / "root.json"))
        except Exception:  # noqa: BLE001 - python-tuf's own path then decides
            return None
        path = target.path
        if root.signed.consistent_snapshot:
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(target.hashes.values()))}.{basename}"
        return f"{self.endpoints.targets_url}{path}"

    # -- internals ---------------------------------------------------------------------

    def _current(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def _mapped(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return _mapped_errors(doing, self._expiry_of)

    def _expiry_of(self, role: str) -> str | None:
        """The expiry written in the newest metadata of ``role`` this cycle has seen."""
        local = self.metadata_dir / f"{quote(role, '')}.json"
        candidates = [self._notes.seen.get(role)]
        with contextlib.suppress(OSError):
            candidates.insert(0 if role == "root" else 1, local.read_bytes())
        for data in candidates:
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                if data is not None:
                    return str(json.loads(data)["signed"]["expires"])
        return None

    def _targetinfo(self, path: str) -> TargetFile | None:
        updater = self._current()
        with self._mapped(f"look up {path}"):
            return updater.get_targetinfo(path)

    def _require(self, path: str) -> TargetFile:
        target = self._targetinfo(path)
        if target is None:
            raise ReleaseNotFoundError(f"{path} is not a signed target of the repository")
        return target

    def _load_releases(self, app: str, platform: str) -> list[ReleaseFacts]:
        index_path = index_target_path(app, platform)
        if self._targetinfo(index_path) is None:
            return []
        cached = self.downloads_dir / "index" / quote(index_path, "")
        self.download(index_path, cached)
        with self._mapped(f"read {index_path}"):
            data = cached.read_bytes()
        found = [_release_facts(self._require(path), app, platform)
                 for path in parse_index(data)]
        return sorted(found, key=lambda facts: facts.parsed_version)


def _release_facts(target: TargetFile, app: str, platform: str) -> ReleaseFacts:
    facts = ReleaseFacts.from_custom(target.custom, target.path)
    if facts.target_path != target.path or facts.app != app or facts.platform != platform:
        raise RepositoryError(f"the signed facts of {target.path} describe another release")
    return facts


class _StreamHashes:
    """The signed hashes and length of one target, computed as its bytes arrive.

    python-tuf's ``download_target`` reads the downloaded file again to hash it and then
    copies it; on a 100 MB release that is most of the download's time. Here the hashes
    are taken from the fetcher's tee (hashlib lets go of the interpreter lock, so this
    overlaps the unpacking thread) and compared with the signed ones exactly as
    ``TargetFile.verify_length_and_hashes`` does; when the bytes did not all arrive in
    this run (a resumed ``.part``), that python-tuf method hashes the file instead.
    """

    def __init__(self, target: TargetFile) -> None:
        self.target = target
        self._hashes: dict[str, hashlib._Hash] | None = {}
        for algorithm in target.hashes:
            try:
                self._hashes[algorithm] = hashlib.new(algorithm)
            except ValueError:  # python-tuf knows algorithms hashlib may not
                self._hashes = None
                break
        self._count = 0

    def tee(self, then: Tee | None) -> Tee:
        def tee(offset: int, data: bytes) -> None:
            self._add(offset, data)
            if then is not None:
                then(offset, data)
        return tee

    def _add(self, offset: int, data: bytes) -> None:
        if self._hashes is None:
            return
        if offset != self._count:  # resumed or restarted: hash the file at the end
            self._hashes = None
            return
        for h in self._hashes.values():
            h.update(data)
        self._count += len(data)

    def verify(self, file: IO[bytes]) -> None:
        """Raises LengthOrHashMismatchError unless ``file`` is the signed target."""
        if self._hashes is None or self._count != self.target.length:
            self.target.verify_length_and_hashes(file)
            return
        for algorithm, h in self._hashes.items():
            if h.hexdigest() != self.target.hashes[algorithm]:
                raise tuf_errors.LengthOrHashMismatchError(
                    f"Observed hash {h.hexdigest()} does not match expected hash "
                    f"{self.target.hashes[algorithm]}")


def _durable_rename(temp: Path, dest: Path) -> None:
    with open(temp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temp, dest)
    fsync_dir(dest.parent)
