"""`fleetup release push` is per release and idempotent (issue 16 §3): releases added
together push one by one in any order, a retried push succeeds and says so, and a
release the server's targets name but whose files were not pushed is not offered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetup.repository import init_repo
from fleetup.server import init_store
from tests.integration.server.conftest import make_tokens
from tests.support.fleet import FleetServer, cli, publish

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def push(server: FleetServer, repo: Path, token: str, version: str) -> dict[str, object]:
    result = cli("release", "push", "--repo", str(repo), "--app", "hello", "--version",
                 version, "--server", server.url, "--json", token=token, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    return dict(json.loads(result.stdout))


def offered(server: FleetServer, token: str) -> set[str]:
    with server.client(token) as client:
        return {r["version"] for r in client.get("/api/v1/releases").json()["data"]}


def test_releases_added_together_push_one_by_one_in_any_order(tmp_path: Path,
                                                              db_url: str) -> None:
    repo, work, data = tmp_path / "pub", tmp_path / "work", tmp_path / "data"
    init_repo(repo)
    init_store(repo, data)  # a server seeded before any release was added
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        publish(repo, work, version)
    tokens = make_tokens(db_url)
    server = FleetServer(data, db_url).start()
    try:
        token = tokens["publisher"]
        first = push(server, repo, token, "1.0.0")
        assert first["targets_version"] == 4
        assert not first["already_pushed"]
        assert sorted(first["pending"]) == [  # type: ignore[call-overload]
            "hello/linux-x86_64/hello-1.1.0.tar.zst", "hello/linux-x86_64/hello-1.2.0.tar.zst"]
        assert offered(server, tokens["viewer"]) == {"1.0.0"}
        # A rollout of a release not pushed yet is refused: it is not offered.
        with server.client(tokens["admin"]) as client:
            refused = client.post("/api/v1/rollouts", json={
                "app": "hello", "version": "1.2.0", "channel": "stable", "stages": [100]})
        assert refused.status_code in (404, 409, 422), refused.text
        third = push(server, repo, token, "1.2.0")  # out of order
        assert not third["already_pushed"]
        assert "hello/linux-x86_64/hello-1.2.0.tar.zst" in third["stored_files"]  # type: ignore[operator]
        assert offered(server, tokens["viewer"]) == {"1.0.0", "1.2.0"}
        push(server, repo, token, "1.1.0")
        retried = push(server, repo, token, "1.1.0")
        assert retried["already_pushed"]
        assert retried["stored_files"] == []
        assert retried["pending"] == []
        assert offered(server, tokens["viewer"]) == {"1.0.0", "1.1.0", "1.2.0"}
        human = cli("release", "push", "--repo", str(repo), "--app", "hello", "--version",
                    "1.0.0", "--server", server.url, token=token)
        assert "already on the server" in human.stderr
    finally:
        server.stop()


def test_repo_init_after_release_add_then_push_succeeds(tmp_path: Path, db_url: str) -> None:
    """The README's two orders: seeding the store after `release add` copies the
    releases, and the push that follows says they are already there."""
    repo, work, data = tmp_path / "pub", tmp_path / "work", tmp_path / "data"
    init_repo(repo)
    publish(repo, work, "1.0.0")
    cli("admin", "repo", "init", "--from", str(repo), "--data", str(data))
    tokens = make_tokens(db_url)
    server = FleetServer(data, db_url).start()
    try:
        result = cli("release", "push", "--repo", str(repo), "--app", "hello", "--version",
                     "1.0.0", "--server", server.url, token=tokens["publisher"],
                     subprocess_=True, check=False)
        assert result.returncode == 0, result.stderr
        assert "already on the server" in result.stderr
    finally:
        server.stop()
