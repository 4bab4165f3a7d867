"""[download] require_https and allowed_hosts through the real agent CLI, against real
loopback servers: 127.0.0.1 and localhost are the two hosts (a mirror that redirects
from one to the other)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.device import new_repo, publish, run_agent, write_config
from tests.support.http import StaticServer, serve_directory


class _Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a redirect to the same path on ``target``."""

    target = ""
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.target + self.path.lstrip("/"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, StaticServer]]:
    repo = new_repo(tmp_path / "repo")
    publish(repo, tmp_path, "1.0.0")
    with serve_directory(repo / "public", tmp_path,
                         access_log=tmp_path / "access.log") as server:
        yield repo, server


@pytest.fixture
def redirector(served: tuple[Path, StaticServer]) -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 redirecting to the static server under the name localhost."""
    _, static = served
    seen: list[str] = []
    handler = type("Handler", (_Redirector,), {
        "target": static.url.replace("127.0.0.1", "localhost"), "seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _config(tmp_path: Path, repo: Path, url: str, download: str) -> Path:
    return write_config(tmp_path / "agent.toml", tmp_path / "device", url,
                        repo / "public/metadata/1.root.json", extra=download)


def _error(result: object) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_require_https_refuses_an_http_repository_before_any_request(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    repo, server = served
    config = _config(tmp_path, repo, server.url, "require_https = true")
    before = len(server.requests())  # the server's own start-up probe
    checked = run_agent(config, "check")
    assert checked.returncode == 1
    line = _error(checked)
    assert f"refusing {server.url}" in line, line
    assert "host 127.0.0.1" in line
    assert "require_https" in line
    assert len(server.requests()) == before
    assert not (tmp_path / "device" / "current").exists()


def test_a_redirect_to_a_host_not_allowed_is_refused_naming_it(
        tmp_path: Path, served: tuple[Path, StaticServer],
        redirector: tuple[str, list[str]]) -> None:
    repo, server = served
    url, seen = redirector
    config = _config(tmp_path, repo, url, 'allowed_hosts = ["127.0.0.1"]')
    before = len(server.requests())
    updated = run_agent(config, "update", "--no-progress")
    assert updated.returncode == 1
    line = _error(updated)
    assert "host localhost is not in [download] allowed_hosts" in line, line
    assert seen  # the first hop went out, to an allowed host
    assert len(server.requests()) == before  # the hop to localhost never did
    assert not (tmp_path / "device" / "current").exists()


def test_allowed_hosts_pass_through_redirects(
        tmp_path: Path, served: tuple[Path, StaticServer],
        redirector: tuple[str, list[str]]) -> None:
    repo, server = served
    url, _ = redirector
    config = _config(tmp_path, repo, url, 'allowed_hosts = ["127.0.0.1", "localhost"]')
    before = len(server.requests())
    updated = run_agent(config, "update", "--no-progress")
    assert updated.returncode == 0, updated.stderr
    assert "installed 1.0.0" in updated.stdout
    assert len(server.requests()) > before  # everything came from the redirect's target
