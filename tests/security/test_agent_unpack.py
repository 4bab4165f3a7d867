"""Attacks on what the agent unpacks and downloads before python-tuf has verified it.

The agent unpacks an archive while it downloads (``StreamingUnpack``), so a mirror with
no keys decides what the unpacker sees until the hash is checked at the end. Nothing it
serves may create unbounded structure on the device, stall a download for the whole
deadline, or leave the device unable to update once genuine bytes are back.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard
from tuf.api import exceptions

from fleetup._archive import extract_archive
from fleetup.agent._fetcher import FetchSettings, HttpxFetcher
from fleetup.errors import UnsafeArchiveError
from tests.security._table import Attack, attack, rows, run_row
from tests.support.device import current_digest, new_repo, publish, run_agent, write_config
from tests.support.http import serve_directory

ATTACKS: list[Attack] = []

NESTED = 1100  # past the ~990 levels at which recursive clean-up dies


def _public(repo: Path) -> Path:
    """The tree a repository serves to devices (the one place that knows the layout)."""
    return repo / "public"


def _tar_zst(members: list[tarfile.TarInfo]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info)
    return zstandard.ZstdCompressor().compress(raw.getvalue())


def _dir(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info


def _nested(levels: int) -> list[tarfile.TarInfo]:
    return [_dir("/".join(["d"] * n)) for n in range(1, levels + 1)]


def _remove_deep(path: Path) -> None:
    """Remove what an old agent left behind without recursing (pytest's clean-up does)."""
    stack = [str(path)]
    while stack and os.path.lexists(stack[0]):
        top = stack[-1]
        subdirs = [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
        for entry in os.scandir(top):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        if subdirs:
            stack.extend(subdirs)
        else:
            os.rmdir(stack.pop())


@pytest.fixture
def device_dir(tmp_path: Path) -> Iterator[Path]:
    device = tmp_path / "device"
    yield device
    if device.exists():
        _remove_deep(device)


@attack(ATTACKS, "agent-unpack.nested-folders-lockout", attacker="mirror",
        refusal="the archive is refused in one line, nothing is left in releases/, and "
                "the device installs once the genuine bytes are back")
def check_nested_folders_lockout(tmp_path: Path, device_dir: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    # A release with more entries than the attack needs: the entry count alone allows it.
    release = publish(repo, tmp_path, "1.0.0", files=NESTED, file_size=256)
    (archive,) = (_public(repo) / "targets").rglob("*.hello-1.0.0.tar.zst")
    genuine = archive.read_bytes()
    hostile = _tar_zst(_nested(NESTED))
    assert len(hostile) < len(genuine)
    archive.write_bytes(hostile + b"\0" * (len(genuine) - len(hostile)))  # the signed length
    with serve_directory(_public(repo), tmp_path) as server:
        config = write_config(tmp_path / "agent.toml", device_dir, server.url,
                              _public(repo) / "metadata" / "1.root.json")
        for _ in range(2):  # and again: the first attempt must not wedge the next
            result = run_agent(config, "update", "--no-progress")
            assert result.returncode == 1, result.stdout + result.stderr
            assert "internal error" not in result.stderr, result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            assert not list((device_dir / "releases").iterdir())
        archive.write_bytes(genuine)
        result = run_agent(config, "update", "--no-progress")
        assert result.returncode == 0, result.stdout + result.stderr
    assert current_digest(device_dir) == release.digest


@attack(ATTACKS, "agent-unpack.too-deep-tree", attacker="mirror",
        refusal="UnsafeArchiveError naming the entry past the depth bound; nothing deeper "
                "is created")
def check_too_deep_tree(tmp_path: Path) -> None:
    data = _tar_zst(_nested(200))
    dest = tmp_path / "dest"
    try:
        with pytest.raises(UnsafeArchiveError, match="deeper than"):
            extract_archive(io.BytesIO(data), dest, max_size=0, max_entries=1000)
        assert not (dest / "/".join(["d"] * 129)).exists()
    finally:
        _remove_deep(dest)


@attack(ATTACKS, "agent-unpack.sticky-world-writable-folder", attacker="local-user",
        refusal="a release folder any local user could write into (0777, or 1777 sticky) "
                "is refused at unpack, never created")
def check_sticky_world_writable_folder(tmp_path: Path) -> None:
    data = _tar_zst([_dir("bin"), _dir("tmp", 0o1777)])
    with pytest.raises(UnsafeArchiveError, match=r"^tmp: world-writable \(mode 1777\)"):
        extract_archive(io.BytesIO(data), tmp_path / "dest", max_size=0, max_entries=10)


class _Trickle(BaseHTTPRequestHandler):
    """Announces a large body, then sends one byte every 20 ms."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        deadline = time.monotonic() + 30  # the test never hangs, whatever the agent does
        try:
            while time.monotonic() < deadline:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass  # the client gave up: what the test wants

    def log_message(self, *_: object) -> None:
        pass


@attack(ATTACKS, "agent-unpack.trickled-download", attacker="mirror",
        refusal="a download that makes no progress for download.stall_timeout is aborted "
                "with a 'stalled' message, not held for the whole deadline")
def check_trickled_download(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/targets/a.tar.zst"
    settings = FetchSettings(stall_timeout=0.3, stall_bytes=1024, read_timeout=5,
                             max_attempts=1)
    fetcher = HttpxFetcher(settings, partial_dir=tmp_path, resume_prefix=url)
    try:
        with pytest.raises(exceptions.SlowRetrievalError, match="stalled"), \
                fetcher.download_file(url, 1 << 20):
            pass
    finally:
        fetcher.close()
        server.shutdown()
        server.server_close()


@rows(ATTACKS)
def test_attack(row: Attack, request: pytest.FixtureRequest) -> None:
    run_row(row, request)
