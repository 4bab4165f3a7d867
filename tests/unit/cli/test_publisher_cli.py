"""The publisher's commands through ``fleetup.cli.main``: output, exit codes, one-line errors.

The same commands run as real subprocesses in ``tests/integration/test_publisher.py``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetup.cli import main
from fleetup.repository import init_repo
from tests.support.trees import Link, fingerprint, make_tree, sample_app

PLATFORM = "linux-x86_64"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


pytestmark = pytest.mark.usefixtures("no_fsync")


@pytest.fixture
def fleetup(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


@pytest.fixture
def repo(tmp_path: Path, fleetup: Run) -> Path:
    path = tmp_path / "repo"
    assert fleetup("repo", "init", path).code == 0
    return path


@pytest.fixture
def src(tmp_path: Path) -> Callable[[str], Path]:
    def make(version: str, payload_size: int = 20_000) -> Path:
        return sample_app(tmp_path / "src" / version, version, payload_size=payload_size)
    return make


def add(fleetup: Run, repo: Path, tree: Path, version: str, *extra: str) -> Result:
    return fleetup("release", "add", tree, "--repo", repo, "--app", "hello", "--version",
                   version, "--platform", PLATFORM, "--json", *extra)


# -- happy paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    [], ["repo"], ["repo", "init"], ["repo", "refresh"], ["release"], ["release", "add"],
    ["release", "list"], ["release", "yank"], ["keys"], ["keys", "rotate"]])
def test_every_command_has_help(fleetup: Run, command: list[str]) -> None:
    result = fleetup(*command, "--help")
    assert result.code == 0
    assert result.out.startswith("Usage: fleetup")


def test_version_option(fleetup: Run) -> None:
    result = fleetup("--version")
    assert result.code == 0
    assert result.out.startswith("fleetup, version ")


def test_repo_init_prints_where_the_root_of_trust_is(tmp_path: Path, fleetup: Run) -> None:
    result = fleetup("repo", "init", tmp_path / "r")
    assert result.code == 0
    assert result.out == ""
    assert f"ship {tmp_path / 'r/public/metadata/1.root.json'} to devices" in result.err
    as_json = fleetup("repo", "init", tmp_path / "j", "--json").json
    assert as_json == {"repo": str(tmp_path / "j"),
                       "trusted_root": str(tmp_path / "j/public/metadata/1.root.json"),
                       "public": str(tmp_path / "j/public"), "keys": str(tmp_path / "j/keys")}
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert (tmp_path / "j/keys" / f"{role}.key").stat().st_mode & 0o777 == 0o600


def test_repo_init_expiry_options(tmp_path: Path, fleetup: Run) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result = fleetup("repo", "init", tmp_path / "r", "--expires-days", "30",
                     "--expires", "timestamp=2", "--expires", "root=400")
    assert result.code == 0
    after = datetime.now(UTC)

    def expires(name: str) -> datetime:
        raw = json.loads((tmp_path / "r/public/metadata" / name).read_bytes())["signed"]["expires"]
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))

    for name, days in [("1.root.json", 400), ("1.targets.json", 30),
                       ("1.snapshot.json", 7), ("timestamp.json", 2)]:
        assert before + timedelta(days=days) <= expires(name) <= after + timedelta(days=days)


def test_repo_init_with_passphrase_env(tmp_path: Path, fleetup: Run,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETUP_TEST_PW", "s3cret")
    assert fleetup("repo", "init", tmp_path / "r", "--passphrase-env", "FLEETUP_TEST_PW"
                   ).code == 0
    assert (tmp_path / "r/keys/root.key").read_bytes().startswith(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    tree = sample_app(tmp_path / "src", "1.0.0", payload_size=100)
    result = add(fleetup, tmp_path / "r", tree, "1.0.0", "--passphrase-env", "FLEETUP_TEST_PW")
    assert result.code == 0, result.err


def test_release_add_reports_facts_sizes_and_deltas(repo: Path, fleetup: Run,
                                                     src: Callable[[str], Path]) -> None:
    first = add(fleetup, repo, src("1.9.0"), "1.9.0", "--channel", "stable",
                "--channel", "beta", "--notes", "hi", "--health-cmd", "bin/health --quick")
    assert first.code == 0, first.err
    assert first.err == ""                     # --json: no progress chatter
    body = first.json
    assert body["version"] == "1.9.0"
    assert body["type"] == "major"
    assert body["channels"] == ["stable", "beta"]
    assert body["target"] == f"hello/{PLATFORM}/hello-1.9.0.tar.zst"
    assert body["deltas"] == {}
    assert body["tree_digest"].startswith("sha256:")
    archive = next((repo / "public/targets/hello" / PLATFORM).glob("*.hello-1.9.0.tar.zst"))
    assert body["archive_size"] == archive.stat().st_size

    second = add(fleetup, repo, src("1.10.0"), "1.10.0").json
    assert second["type"] == "minor"          # 1.10.0 > 1.9.0: PEP 440, not strings
    assert list(second["deltas"]) == ["1.9.0"]
    assert 0 < second["deltas"]["1.9.0"] < second["archive_size"]
    assert add(fleetup, repo, src("1.10.1"), "1.10.1", "--type", "security").json[
        "type"] == "security"


def test_release_add_without_json_talks_on_stderr(repo: Path, fleetup: Run,
                                                  src: Callable[[str], Path]) -> None:
    result = fleetup("release", "add", src("1.0.0"), "--repo", repo, "--app", "hello",
                     "--version", "1.0.0")
    assert result.code == 0
    assert result.out == ""
    assert "published hello 1.0.0" in result.err


def test_release_list_and_yank(repo: Path, fleetup: Run, src: Callable[[str], Path]) -> None:
    for version in ("1.9.0", "1.10.0"):
        add(fleetup, repo, src(version, 100), version)
    listing = fleetup("release", "list", "--repo", repo, "--json").json
    assert [r["version"] for r in listing] == ["1.9.0", "1.10.0"]
    assert listing[0]["archive_size"] > 0
    assert {r["yanked"] for r in listing} == {False}

    yanked = fleetup("release", "yank", "--repo", repo, "--app", "hello", "--version",
                     "1.10", "--reason", "boot loop", "--json")
    assert yanked.code == 0
    assert yanked.json == [{"app": "hello", "version": "1.10.0", "platform": PLATFORM}]
    listing = fleetup("release", "list", "--repo", repo, "--json").json
    assert [(r["version"], r["yanked"], r["yank_reason"]) for r in listing] == [
        ("1.9.0", False, None), ("1.10.0", True, "boot loop")]

    table = fleetup("release", "list", "--repo", repo)
    assert table.code == 0
    lines = [line for line in table.out.splitlines() if "hello" in line]
    assert len(lines) == 2
    assert "yanked" in lines[1]
    assert "yanked" not in lines[0]


def test_repo_refresh(repo: Path, fleetup: Run) -> None:
    assert fleetup("repo", "refresh", "--repo", repo, "--json").json == {
        "snapshot": 2, "timestamp": 2}
    assert fleetup("repo", "refresh", "--repo", repo, "--role", "targets", "--json").json == {
        "targets": 2, "snapshot": 3, "timestamp": 3}
    text = fleetup("repo", "refresh", "--repo", repo)
    assert text.code == 0
    assert "re-signed snapshot (v4), timestamp (v4)" in text.err


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_keys_rotate(repo: Path, fleetup: Run, role: str) -> None:
    old = json.loads((repo / "public/metadata/1.root.json").read_bytes())["signed"]["roles"][role]
    result = fleetup("keys", "rotate", "--repo", repo, role, "--json")
    assert result.code == 0, result.err
    new_root = json.loads((repo / "public/metadata/2.root.json").read_bytes())["signed"]
    assert result.json == {"role": role, "keyid": new_root["roles"][role]["keyids"][0]}
    assert new_root["roles"][role]["keyids"] != old["keyids"]


def test_keys_rotate_online(repo: Path, fleetup: Run) -> None:
    result = fleetup("keys", "rotate", "--repo", repo, "--online", "--json")
    assert result.code == 0, result.err
    roles = json.loads((repo / "public/metadata/2.root.json").read_bytes())["signed"]["roles"]
    assert result.json == {"keyids": {role: roles[role]["keyids"][0]
                                      for role in ("snapshot", "timestamp")}}
    assert not (repo / "public/metadata/3.root.json").exists()  # one root for both
    text = fleetup("keys", "rotate", "--repo", repo, "--online")
    assert "rotated the snapshot key" in text.err
    assert "rotated the timestamp key" in text.err


@pytest.mark.parametrize("args", [(), ("timestamp", "--online")])
def test_keys_rotate_needs_one_role_or_online(repo: Path, fleetup: Run,
                                              args: tuple[str, ...]) -> None:
    result = fleetup("keys", "rotate", "--repo", repo, *args)
    assert result.code == 1
    assert result.err.strip() == "error: name one ROLE, or pass --online (snapshot and timestamp)"
    assert not (repo / "public/metadata/2.root.json").exists()


# -- bad input: one line, exit 1, repository unchanged ----------------------------------------


def swap_in_foreign_key(repo: Path, tmp_path: Path, role: str) -> None:
    other = tmp_path / "other"
    init_repo(other)
    shutil.copy(other / "keys" / f"{role}.key", repo / "keys" / f"{role}.key")


BAD: dict[str, tuple[Callable[[Path, Path], None] | None, list[str], str]] = {
    "missing-source": (None, ["release", "add", "{tmp}/nowhere", "--repo", "{repo}",
                              "--app", "hello", "--version", "2.0"], "not a directory"),
    "source-is-a-file": (None, ["release", "add", "{repo}/fleetup-repo.json", "--repo",
                                "{repo}", "--app", "hello", "--version", "2.0"],
                         "not a directory"),
    "escaping-link": (None, ["release", "add", "{tmp}/escaping", "--repo", "{repo}",
                             "--app", "hello", "--version", "2.0"], "points outside the tree"),
    "not-a-version": (None, ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app",
                             "hello", "--version", "two"], r"not a version \(PEP 440\): 'two'"),
    "duplicate": (None, ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app",
                         "hello", "--version", "1.0.0"], "hello 1.0.0 .* is already published"),
    "duplicate-1.0": (None, ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app",
                             "hello", "--version", "1.0"], "hello 1.0.0 .* is already"),
    "bad-app-name": (None, ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app",
                            "../x", "--version", "2.0"], "invalid app name"),
    "bad-health-cmd": (None, ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app",
                              "hello", "--version", "2.0", "--health-cmd", "'unclosed"],
                       "--health-cmd: No closing quotation"),
    "bad-rollout": (None, ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app",
                           "hello", "--version", "2.0", "--rollout", "10@1e30d"],
                    "bad rollout step"),
    "missing-key": (lambda repo, tmp: (repo / "keys/targets.key").unlink(),
                    ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app", "hello",
                     "--version", "2.0"], "the targets key is missing"),
    "foreign-key": (lambda repo, tmp: swap_in_foreign_key(repo, tmp, "snapshot"),
                    ["release", "add", "{tmp}/good", "--repo", "{repo}", "--app", "hello",
                     "--version", "2.0"], "not a snapshot key of this repository's root"),
    "foreign-root-key": (lambda repo, tmp: swap_in_foreign_key(repo, tmp, "root"),
                         ["keys", "rotate", "--repo", "{repo}", "targets"], "not a root key"),
    "passphrase-env-unset": (None, ["repo", "refresh", "--repo", "{repo}",
                                    "--passphrase-env", "FLEETUP_TEST_UNSET"],
                             "environment variable FLEETUP_TEST_UNSET holds no passphrase"),
    "yank-unknown": (None, ["release", "yank", "--repo", "{repo}", "--app", "hello",
                            "--version", "9.9"], "no release hello 9.9"),
    "not-a-repo": (None, ["release", "list", "--repo", "{tmp}/good"],
                   "not a fleetup repository"),
    "bad-expiry-role": (None, ["repo", "init", "{tmp}/new", "--expires", "admin=3"],
                        "--expires admin=3: unknown role 'admin'"),
    "bad-expiry-days": (None, ["repo", "init", "{tmp}/new", "--expires", "root=soon"],
                        "DAYS must be a number"),
    "init-over-repo": (None, ["repo", "init", "{repo}"], "exists and is not an empty directory"),
}


@pytest.fixture
def published(tmp_path: Path, fleetup: Run) -> Path:
    repo = tmp_path / "repo"
    assert fleetup("repo", "init", repo).code == 0
    sample_app(tmp_path / "good", "1.0.0", payload_size=100)
    make_tree(tmp_path / "escaping", {"ok": "x", "sneaky": Link("/etc/shadow")})
    assert add(fleetup, repo, tmp_path / "good", "1.0.0").code == 0
    return repo


def assert_one_error_line(result: Result, pattern: str) -> None:
    assert result.code == 1, result
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines, result
    assert lines[-1].startswith("error: ")
    assert re.search(pattern, lines[-1]), (pattern, lines[-1])
    assert not any(line.startswith("error") for line in lines[:-1])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_1_and_changes_nothing(
        published: Path, tmp_path: Path, fleetup: Run, case: str) -> None:
    prepare, argv, pattern = BAD[case]
    if prepare:
        prepare(published, tmp_path)
    before = fingerprint(tmp_path)
    args = [a.format(tmp=tmp_path, repo=published) for a in argv]
    result = fleetup(*args)
    assert_one_error_line(result, pattern)
    assert result.out == ""
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize(("env", "expected"), [
    (None, "it is encrypted: pass --passphrase-env VAR"),
    ("wrong", "wrong passphrase or not a PEM key"),
])
def test_encrypted_keys_without_the_right_passphrase(
        tmp_path: Path, fleetup: Run, monkeypatch: pytest.MonkeyPatch,
        env: str | None, expected: str) -> None:
    monkeypatch.setenv("PW", "right")
    repo = tmp_path / "repo"
    assert fleetup("repo", "init", repo, "--passphrase-env", "PW").code == 0
    tree = sample_app(tmp_path / "src", "1.0.0", payload_size=100)
    before = fingerprint(repo)
    extra = []
    if env is not None:
        monkeypatch.setenv("PW", env)
        extra = ["--passphrase-env", "PW"]
    for argv in (["release", "add", tree, "--repo", repo, "--app", "a", "--version", "1",
                  *extra],
                 ["repo", "refresh", "--repo", repo, *extra],
                 ["keys", "rotate", "--repo", repo, "timestamp", *extra]):
        assert_one_error_line(fleetup(*argv), expected)
        assert fingerprint(repo) == before


def test_expired_metadata_on_refresh(tmp_path: Path, fleetup: Run) -> None:
    repo = tmp_path / "repo"
    init_repo(repo, now=datetime.now(UTC) - timedelta(days=100))   # targets (90 d) expired
    before = fingerprint(repo)
    result = fleetup("repo", "refresh", "--repo", repo)
    assert_one_error_line(result, r"targets metadata expired at .*--role targets")
    assert fingerprint(repo) == before
    fixed = fleetup("repo", "refresh", "--repo", repo, "--role", "targets", "--json")
    assert fixed.code == 0
    assert fixed.json["targets"] == 2


def test_disk_full_is_one_line(published: Path, tmp_path: Path, fleetup: Run,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    tree = sample_app(tmp_path / "v2", "2.0.0", payload_size=100)
    before = fingerprint(published)
    real_replace = os.replace

    def full(src: Any, dst: Any) -> None:
        if str(dst).endswith("timestamp.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    for argv in (["release", "add", tree, "--repo", published, "--app", "hello",
                  "--version", "2.0.0"],
                 ["release", "yank", "--repo", published, "--app", "hello", "--version", "1.0"],
                 ["repo", "refresh", "--repo", published],
                 ["keys", "rotate", "--repo", published, "root"]):
        result = fleetup(*argv)
        assert_one_error_line(result, r"no space left on device .*timestamp\.json")
        assert fingerprint(published) == before


def test_debug_adds_the_traceback(published: Path, fleetup: Run) -> None:
    result = fleetup("--debug", "release", "yank", "--repo", published, "--app", "hello",
                     "--version", "7")
    assert result.code == 1
    assert "Traceback" in result.err
    assert result.err.splitlines()[-1] == "error: no release hello 7"


def test_usage_errors_from_click_exit_2(fleetup: Run, tmp_path: Path) -> None:
    result = fleetup("keys", "rotate", "--repo", tmp_path, "admin")
    assert result.code == 2
    assert "Invalid value for" in result.err
    assert "Traceback" not in result.err
