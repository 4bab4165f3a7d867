"""Fixtures for the publisher's tests: a fresh repository, sample trees, and a TUF client.

The client is an unmodified ``tuf.ngclient.Updater`` whose fetcher (its one seam) reads
the repository directory instead of a socket; the integration tests do the same over
real HTTP.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from fleetup.repository import AddedRelease, ReleaseRequest, add_release, init_repo
from tests.support.trees import sample_app

PLATFORM = "linux-x86_64"
BASE_URL = "http://repo.invalid/"


class DirectoryFetcher(FetcherInterface):
    """Answers ``BASE_URL + path`` with the file at ``root / path``, or a 404."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requested: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requested.append(url)
        path = self.root / url.removeprefix(BASE_URL)
        if not url.startswith(BASE_URL) or not path.is_file():
            raise DownloadHTTPError(f"not found: {url}", 404)
        yield path.read_bytes()


def make_client(repo: Path, workdir: Path, trusted_root: bytes | None = None) -> Updater:
    """A client that trusts ``trusted_root`` (default: the repository's 1.root.json)."""
    meta = workdir / "client-metadata"
    targets = workdir / "client-targets"
    meta.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    root = trusted_root or (repo / "public/metadata" / "1.root.json").read_bytes()
    return Updater(str(meta), f"{BASE_URL}metadata/", str(targets), f"{BASE_URL}targets/",
                   fetcher=DirectoryFetcher(repo / "public"), bootstrap=root)


@pytest.fixture(autouse=True)
def _no_fsync(no_fsync: None) -> None:
    """Every repository unit test runs without fsync (see ``no_fsync``)."""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository made with default settings and the real clock."""
    path = tmp_path / "repo"
    init_repo(path)
    return path


Publish = Callable[..., AddedRelease]


@pytest.fixture
def publish(repo: Path, tmp_path: Path) -> Publish:
    """``publish("1.2.0", app=..., payload_size=..., **request_fields)``: a sample release.

    The default payload makes deltas worth publishing; a small one keeps a test fast.
    """
    def _publish(version: str, *, app: str = "hello", platform: str = PLATFORM,
                 passphrase: bytes | None = None, payload_size: int = 64 << 10,
                 **fields: object) -> AddedRelease:
        src = tmp_path / "sources" / f"{app}-{platform}-{version}"
        if src.exists():
            shutil.rmtree(src)
        sample_app(src, version, payload_size=payload_size)
        request = ReleaseRequest(src=src, app=app, version=version, platform=platform,
                                 **fields)  # type: ignore[arg-type]
        return add_release(repo, request, passphrase=passphrase)

    return _publish
