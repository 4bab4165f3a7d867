"""The agent in static mode, as users run it: ``fleetup agent`` processes against a
repository served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tests.support.device import (
    FLEETUP,
    current_digest,
    dir_fingerprint,
    new_repo,
    publish,
    publish_raw_archive,
    run_agent,
    write_config,
)
from tests.support.http import StaticServer, serve_directory


def _fleetup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEETUP, *args], capture_output=True, text=True, check=False)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, StaticServer]]:
    repo = new_repo(tmp_path / "repo")
    with serve_directory(repo / "public", tmp_path, access_log=tmp_path / "access.log") as server:
        yield repo, server


def _config(tmp_path: Path, server: StaticServer, repo: Path, **kwargs: str) -> Path:
    return write_config(tmp_path / "agent.toml", tmp_path / "device", server.url,
                        repo / "public/metadata" / "1.root.json", **kwargs)


def test_install_update_bad_release_manual_rollback_and_yank(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    repo, server = served
    config = _config(tmp_path, server, repo)
    device = tmp_path / "device"
    v1 = publish(repo, tmp_path, "1.0.0")
    assert run_agent(config, "check").returncode == 10
    assert run_agent(config, "update", "--no-progress").returncode == 0
    assert current_digest(device) == v1.digest
    (device / "data" / "state.db").write_bytes(b"user data")
    before = dir_fingerprint(device / "data")

    v11 = publish(repo, tmp_path, "1.1.0")
    assert run_agent(config, "check").returncode == 10
    updated = run_agent(config, "update", "--no-progress")
    assert updated.returncode == 0, updated.stderr
    assert "installed 1.1.0" in updated.stdout
    assert current_digest(device) == v11.digest

    publish(repo, tmp_path, "1.2.0", health_exit=3)
    bad = run_agent(config, "update", "--no-progress")
    assert bad.returncode == 20, bad.stderr
    assert current_digest(device) == v11.digest
    assert run_agent(config, "check").returncode == 0  # remembered, not offered again
    status = json.loads(run_agent(config, "status", "--json").stdout)
    assert status["version"] == "1.1.0"
    assert status["state"] == "idle"
    assert status["failed"][0]["version"] == "1.2.0"
    assert "exited 3" in status["failed"][0]["reason"]

    by_hand = run_agent(config, "rollback", "--json")
    assert by_hand.returncode == 0, by_hand.stderr
    assert current_digest(device) == v1.digest
    again = run_agent(config, "update", "--version", "1.1.0", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert current_digest(device) == v11.digest

    yanked = _fleetup("release", "yank", "--repo", str(repo), "--app", "hello",
                      "--version", "1.1.0", "--reason", "corrupts settings")
    assert yanked.returncode == 0, yanked.stderr
    off = run_agent(config, "update", "--no-progress", "--json")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["result"] == "reverted"
    assert current_digest(device) == v1.digest
    history = json.loads(run_agent(config, "history", "--json").stdout)
    assert [h["result"] for h in history] == [
        "committed", "committed", "rolled-back", "rolled-back", "committed", "rolled-back"]
    assert "corrupts settings" in history[-1]["reason"]
    assert dir_fingerprint(device / "data") == before


def test_first_install_that_fails_its_health_check_leaves_nothing(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    repo, server = served
    config = _config(tmp_path, server, repo)
    publish(repo, tmp_path, "1.0.0", health_exit=1)
    result = run_agent(config, "update", "--no-progress")
    assert result.returncode == 20
    assert not (tmp_path / "device" / "current").exists()
    assert not (tmp_path / "device" / "releases" / "1.0.0").exists()
    status = json.loads(run_agent(config, "status", "--json").stdout)
    assert status["version"] is None


# -- attacks: each installs nothing, says what was wrong in one line, exits 1 --------


@pytest.fixture
def installed(tmp_path: Path, served: tuple[Path, StaticServer]
              ) -> tuple[Path, StaticServer, Path, str]:
    """A device running 1.0.0, and 1.1.0 published but not yet installed."""
    repo, server = served
    config = _config(tmp_path, server, repo)
    v1 = publish(repo, tmp_path, "1.0.0", files=8, file_size=20000)
    assert run_agent(config, "update", "--no-progress").returncode == 0
    publish(repo, tmp_path, "1.1.0", files=8, file_size=20000)
    return repo, server, config, v1.digest


def _archive_file(repo: Path, version: str) -> Path:
    (path,) = (repo / "public/targets/hello/linux-x86_64").glob(f"*.hello-{version}.tar.zst")
    return path


def _assert_refused(tmp_path: Path, config: Path, digest: str, expect: str) -> None:
    # Deltas off: each attack must reach the full archive path.
    text = config.read_text().replace("[download]", "[download]\ndeltas = false")
    config.write_text(text)
    result = run_agent(config, "update", "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    line = _one_error_line(result)
    assert expect in line, line
    device = tmp_path / "device"
    log = (device / ".fleetup" / "log" / "agent.log").read_text()
    assert line.removeprefix("error: ") in log, log  # one-shot refusals are logged too
    assert current_digest(device) == digest
    assert not list((device / "releases").glob("*.partial"))
    assert sorted(p.name for p in (device / "releases").iterdir()) == ["1.0.0"]


def test_tampered_artifact(tmp_path: Path, installed: tuple[Path, StaticServer, Path, str]
                           ) -> None:
    repo, _, config, digest = installed
    path = _archive_file(repo, "1.1.0")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _assert_refused(tmp_path, config, digest, "hash")


def test_artifact_with_junk_appended(tmp_path: Path,
                                     installed: tuple[Path, StaticServer, Path, str]) -> None:
    repo, _, config, digest = installed
    path = _archive_file(repo, "1.1.0")
    path.write_bytes(path.read_bytes() + b"junk" * 1000)
    _assert_refused(tmp_path, config, digest, "length")


def test_artifact_swapped_for_an_older_signed_one(
        tmp_path: Path, installed: tuple[Path, StaticServer, Path, str]) -> None:
    repo, _, config, digest = installed
    shutil.copyfile(_archive_file(repo, "1.0.0"), _archive_file(repo, "1.1.0"))
    _assert_refused(tmp_path, config, digest, "")


def test_replayed_old_metadata_is_refused(tmp_path: Path,
                                          installed: tuple[Path, StaticServer, Path, str]
                                          ) -> None:
    repo, _, config, digest = installed
    old_timestamp = (repo / "public/metadata" / "timestamp.json").read_bytes()
    publish(repo, tmp_path, "1.2.0", files=8, file_size=20000)
    assert run_agent(config, "check").returncode == 10  # the device saw the newer state
    (repo / "public/metadata" / "timestamp.json").write_bytes(old_timestamp)
    _assert_refused(tmp_path, config, digest, "")
    result = run_agent(config, "check")
    assert result.returncode == 1
    assert "rollback" in _one_error_line(result).lower() or "version" in result.stderr


def test_expired_metadata_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init = _fleetup("repo", "init", str(repo), "--expires", "timestamp=0.00002")  # ~2 s
    assert init.returncode == 0, init.stderr
    publish(repo, tmp_path, "1.0.0")
    with serve_directory(repo / "public", tmp_path) as server:
        config = _config(tmp_path, server, repo)
        time.sleep(2.5)
        result = run_agent(config, "update", "--no-progress")
        assert result.returncode == 1
        assert "expired" in _one_error_line(result)
        assert not (tmp_path / "device" / "current").exists()


def test_forged_signature_is_refused(tmp_path: Path,
                                     installed: tuple[Path, StaticServer, Path, str]) -> None:
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata

    repo, _, config, digest = installed
    timestamp = Metadata.from_file(str(repo / "public/metadata" / "timestamp.json"))
    timestamp.signed.version += 1
    timestamp.signatures.clear()
    timestamp.sign(CryptoSigner.generate_ed25519())
    timestamp.to_file(str(repo / "public/metadata" / "timestamp.json"))
    _assert_refused(tmp_path, config, digest, "")
    assert "signature" in run_agent(config, "check").stderr.lower()


def _tar_zst(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return zstandard.ZstdCompressor().compress(raw.getvalue())


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.mark.parametrize(("members", "expect"), [
    ([_file("../evil.sh", b"rm -rf /")], "'..' in path"),
    ([_file("/etc/evil", b"x")], "absolute path"),
    ([_link("escape", "../../../../etc/passwd")], "leads outside the tree"),
    ([_file("bomb.bin", b"\0" * 5_000_000)], "expands past the signed size"),
], ids=["traversal", "absolute", "escaping-link", "bomb"])
def test_malicious_archive_signed_with_the_real_key(
        tmp_path: Path, installed: tuple[Path, StaticServer, Path, str],
        members: list[tuple[tarfile.TarInfo, bytes | None]], expect: str) -> None:
    repo, _, config, digest = installed
    publish_raw_archive(repo, tmp_path, "1.5.0", _tar_zst(*members), tree_size=10_000,
                        tree_entries=10)
    _assert_refused(tmp_path, config, digest, expect)
    assert not any(p.name == "evil.sh" for p in tmp_path.rglob("evil.sh"))


# -- resumable downloads --------------------------------------------------------------


def _big_release(repo: Path, tmp_path: Path) -> None:
    publish(repo, tmp_path, "2.0.0", extra={"blob.bin": os.urandom(3_000_000)})


def _archive_requests(server: StaticServer) -> list[dict[str, object]]:
    return [r for r in server.requests() if str(r["path"]).endswith("hello-2.0.0.tar.zst")]


def _wait_for_part(device: Path, at_least: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list((device / ".fleetup" / "downloads").glob("*.part"))
        if parts and parts[0].stat().st_size >= at_least:
            return parts[0].stat().st_size
        time.sleep(0.02)
    raise AssertionError("the download never started")


def test_download_cut_by_a_dead_server_resumes_after_restart(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _big_release(repo, tmp_path)
    server = StaticServer(repo / "public", tmp_path, rate=400_000,
                          access_log=tmp_path / "a.log").start()
    try:
        config = _config(tmp_path, server, repo)
        agent = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "update",
                                  "--no-progress"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        got = _wait_for_part(tmp_path / "device", 600_000)
        server.kill()
        _, stderr = agent.communicate(timeout=60)
        assert agent.returncode == 1, stderr
        assert not (tmp_path / "device" / "current").exists()
        server.rate = None
        server.start()
        result = run_agent(config, "update", "--no-progress")
        assert result.returncode == 0, result.stderr
        resumed = [r for r in _archive_requests(server) if r.get("range")]
        assert resumed, "the second download did not ask for a range"
        start = int(str(resumed[-1]["range"]).removeprefix("bytes=").split("-")[0])
        assert start >= got
    finally:
        server.stop()


def test_download_resumes_after_the_agent_is_killed(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _big_release(repo, tmp_path)
    with serve_directory(repo / "public", tmp_path, rate=400_000,
                         access_log=tmp_path / "a.log") as server:
        config = _config(tmp_path, server, repo)
        agent = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "update",
                                  "--no-progress"])
        got = _wait_for_part(tmp_path / "device", 600_000)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        result = run_agent(config, "update", "--no-progress")
        assert result.returncode == 0, result.stderr
        ranges = [r["range"] for r in _archive_requests(server) if r.get("range")]
        assert ranges
        assert int(str(ranges[-1]).removeprefix("bytes=").split("-")[0]) >= got
        total = sum(int(str(r["bytes"])) for r in _archive_requests(server))
        size = _archive_file(repo, "2.0.0").stat().st_size
        assert total < size * 1.5, "resuming re-downloaded most of the file"


# -- read-only commands beside a running daemon ---------------------------------------


def _first_update_done(device: Path) -> bool:
    """History written and the journal back to idle: the cycle has ended."""
    try:
        journal = json.loads((device / ".fleetup" / "journal.json").read_bytes())
        return journal["state"] == "idle" and (device / ".fleetup" / "history.jsonl").exists()
    except (FileNotFoundError, ValueError):
        return False


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.json"))}


def test_read_only_commands_work_beside_a_running_daemon(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    """Issue 11 §3: ``check``, ``status``, ``history`` and ``verify`` need no update lock;
    ``check`` leaves the daemon's trusted metadata and status as they were."""
    repo, server = served
    config = _config(tmp_path, server, repo)
    device = tmp_path / "device"
    publish(repo, tmp_path, "1.0.0", files=4)
    daemon = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60  # its first poll installs 1.0.0, then it rests
        while not _first_update_done(device):
            assert daemon.poll() is None, "the daemon ended"
            assert time.monotonic() < deadline, "the daemon did not update"
            time.sleep(0.05)
        publish(repo, tmp_path, "1.1.0", files=4)
        trusted = _files(device / ".fleetup" / "tuf")
        status = (device / ".fleetup" / "status.json").read_bytes()

        checked = run_agent(config, "check")
        assert checked.returncode == 10, checked.stderr
        assert "1.0.0 → 1.1.0" in checked.stdout
        assert _files(device / ".fleetup" / "tuf") == trusted
        assert (device / ".fleetup" / "status.json").read_bytes() == status
        assert json.loads(run_agent(config, "status", "--json").stdout)["version"] == "1.0.0"
        assert run_agent(config, "history", "--json").returncode == 0
        assert run_agent(config, "verify").returncode == 0
        refused = run_agent(config, "verify", "--repair")
        assert refused.returncode == 1
        assert "another fleetup agent is working" in _one_error_line(refused)

        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, output
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert run_agent(config, "check").returncode == 10  # alone again: it records as before
    assert _files(device / ".fleetup" / "tuf") != trusted


def test_a_release_policy_holds_back_says_why_it_waits(
        tmp_path: Path, served: tuple[Path, StaticServer]) -> None:
    """Issue 11 §3: ``check`` still exits 10 for a major outside ``auto`` and ``update``
    0, but both say in one line that it waits and why; ``status --json`` names it."""
    repo, server = served
    config = _config(tmp_path, server, repo)
    publish(repo, tmp_path, "1.0.0", files=4)
    assert run_agent(config, "update", "--no-progress").returncode == 0
    publish(repo, tmp_path, "2.0.0", files=4)
    why = "major updates install only on request (update --version 2.0.0)"

    checked = run_agent(config, "check")
    assert checked.returncode == 10
    assert checked.stdout == f"update available: 1.0.0 → 2.0.0, but `update` will wait: {why}\n"
    updated = run_agent(config, "update", "--no-progress")
    assert updated.returncode == 0
    assert updated.stdout == f"not installed now: 2.0.0 waits: {why}\n"
    status = json.loads(run_agent(config, "status", "--json").stdout)
    assert status["waiting"] == {"version": "2.0.0", "reason": why}
    assert status["version"] == "1.0.0"

    assert run_agent(config, "update", "--no-progress", "--version", "2.0.0").returncode == 0
    assert json.loads(run_agent(config, "status", "--json").stdout)["waiting"] is None


# -- download now, apply later; the pre-update check; progress (issue 17) ---------------


def _with_pre_check(config: Path, tmp_path: Path, exit_code: int) -> Path:
    """``config`` with a ``[health] pre_command`` that exits ``exit_code``."""
    script = tmp_path / f"can-update-{exit_code}"
    script.write_text(f"#!/bin/sh\necho 'on battery' >&2\nexit {exit_code}\n")
    script.chmod(0o755)
    path = tmp_path / f"agent-pre-{exit_code}.toml"
    path.write_text(config.read_text().replace(
        "[health]\n", f'[health]\npre_command = ["{script}"]\n'))
    return path


def _status(config: Path) -> dict[str, object]:
    return dict(json.loads(run_agent(config, "status", "--json").stdout))


def _progress_seen(config: Path, process: subprocess.Popen[str]) -> dict[str, object]:
    """``status --json``'s progress while ``process`` downloads."""
    while process.poll() is None:
        progress = _status(config).get("progress")
        if isinstance(progress, dict) and progress.get("done"):
            return progress
    raise AssertionError("status never showed the download's progress")


def test_download_only_then_apply_offline_held_by_the_pre_check_first(
        tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    publish(repo, tmp_path, "1.0.0", files=4)
    published = publish(repo, tmp_path, "1.1.0", files=4,
                        extra={"blob.bin": os.urandom(1_000_000)})
    server = StaticServer(repo / "public", tmp_path, rate=300_000,
                          access_log=tmp_path / "a.log").start()
    try:
        config = _config(tmp_path, server, repo)
        assert run_agent(config, "update", "--version", "1.0.0").returncode == 0
        staging = subprocess.Popen([*FLEETUP, "agent", "-c", str(config), "update",
                                    "--download-only", "--no-progress"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        progress = _progress_seen(config, staging)
        out, err = staging.communicate(timeout=120)
    finally:
        server.stop()
    assert progress["step"] == "downloading"
    assert 0 < int(str(progress["done"])) <= int(str(progress["total"]))
    assert staging.returncode == 0, err
    assert out == "staged 1.1.0; `fleetup agent apply` switches to it\n"
    status = _status(config)
    assert (status["version"], status["state"], status["progress"]) == ("1.0.0", "ready", None)
    assert isinstance(status["staged"], dict)
    assert status["staged"]["version"] == "1.1.0"

    # The server is gone: apply needs none. The device is busy first: held, not blamed.
    busy = _with_pre_check(config, tmp_path, 1)
    held = run_agent(busy, "apply")
    assert held.returncode == 1
    assert _one_error_line(held) == "error: held: pre-check exited 1: on battery"
    status = _status(busy)
    assert status["held"] == {"by": "pre-check", "reason": "pre-check exited 1: on battery",
                              "since": status["held"]["since"]}  # type: ignore[index]
    assert (status["version"], status["failed"]) == ("1.0.0", [])
    assert "held: pre-check (pre-check exited 1: on battery)" in run_agent(busy, "status").stdout

    applied = run_agent(_with_pre_check(config, tmp_path, 0), "apply")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "installed 1.1.0\n"
    assert current_digest(tmp_path / "device") == published.digest
    assert _status(config)["staged"] is None
    nothing = run_agent(config, "apply")
    assert nothing.returncode == 1
    assert _one_error_line(nothing).startswith("error: nothing is staged to apply")
