"""The publisher as users run it: the real ``fleetup`` executable, a real full disk, and
real SIGKILLs in the middle of ``release add``, judged by an unmodified TUF client over
real HTTP.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tuf.ngclient import Updater

from fleetup._facts import index_target_path, parse_index, release_target_path
from fleetup.cli import main
from fleetup.errors import StorageError
from fleetup.repository import ReleaseRequest, add_release, init_repo, rotate_key
from tests.support.http import StaticServer, serve_directory
from tests.support.trees import Link, fingerprint, make_tree, sample_app

FLEETUP = str(Path(sys.executable).with_name("fleetup"))
APP, PLATFORM = "hello", "linux-x86_64"
PAGE = 4096


@dataclass
class Run:
    code: int
    out: str
    err: str


def fleetup(*args: str | Path, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> Run:
    done = subprocess.run([*prefix, FLEETUP, *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})
    return Run(done.returncode, done.stdout, done.stderr)


def fleetup_in_process(*args: str | Path) -> Run:
    """The same command through ``fleetup.cli.main`` (no interpreter start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Run(code, out.getvalue(), err.getvalue())


def ok_json(run: Run) -> Any:
    assert run.code == 0, run.err
    return json.loads(run.out)


def assert_one_error_line(run: Run, expected: str) -> None:
    assert run.code == 1, run
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    assert lines[-1].startswith("error: "), run.err
    assert expected in lines[-1], (expected, lines[-1])
    assert not any(line.startswith(("error", "internal error")) for line in lines[:-1])


def add_args(repo: Path, tree: Path, version: str) -> list[str | Path]:
    return ["release", "add", tree, "--repo", repo, "--app", APP, "--version", version,
            "--platform", PLATFORM]


# -- the whole command surface, as a subprocess ---------------------------------------------


def test_publisher_commands_end_to_end_with_encrypted_keys(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = {"FLEETUP_PW": "correct horse battery staple"}
    pw = ("--passphrase-env", "FLEETUP_PW")
    init = ok_json(fleetup("repo", "init", repo, *pw, "--json", env=env))
    assert init["trusted_root"] == str(repo / "public/metadata/1.root.json")
    for key in (repo / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    first = ok_json(fleetup(*add_args(repo, sample_app(tmp_path / "a", "1.9.0"), "1.9.0"),
                            *pw, "--json", env=env))
    second = ok_json(fleetup(*add_args(repo, sample_app(tmp_path / "b", "1.10.0"), "1.10.0"),
                             *pw, "--json", env=env))
    assert (first["type"], second["type"]) == ("major", "minor")
    assert list(second["deltas"]) == ["1.9.0"]

    listing = ok_json(fleetup("release", "list", "--repo", repo, "--json"))
    assert [(r["version"], r["yanked"]) for r in listing] == [("1.9.0", False),
                                                              ("1.10.0", False)]
    ok_json(fleetup("release", "yank", "--repo", repo, "--app", APP, "--version", "1.10.0",
                    *pw, "--json", env=env))
    assert ok_json(fleetup("release", "list", "--repo", repo, "--json"))[1]["yanked"] is True
    assert ok_json(fleetup("repo", "refresh", "--repo", repo, *pw, "--json", env=env)) == {
        "snapshot": 5, "timestamp": 5}
    # Every role is rotated as a subprocess in test_tuf_client_reads_repo.py; here the
    # point is that the new key is written encrypted with the same passphrase.
    ok_json(fleetup("keys", "rotate", "--repo", repo, "targets", *pw, "--json", env=env))
    assert (repo / "public/metadata/2.root.json").is_file()
    assert sorted(p.name for p in (repo / "keys").iterdir()) == [
        "root.key", "snapshot.key", "targets.key", "timestamp.key"]
    assert (repo / "keys/targets.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    assert stat.S_IMODE((repo / "keys/targets.key").stat().st_mode) == 0o600
    ok_json(fleetup("repo", "refresh", "--repo", repo, "--role", "targets", *pw, "--json",
                    env=env))


# -- bad input: one line on stderr, exit 1, the repository byte-for-byte as it was ----------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with hello 1.0.0, and one with encrypted keys; copied by each test."""
    base = tmp_path_factory.mktemp("baseline")
    sample_app(base / "v1", "1.0.0", payload_size=500)
    for name, extra in [("plain", ()), ("encrypted", ("--passphrase-env", "PW"))]:
        assert fleetup("repo", "init", base / name, *extra, env={"PW": "pw"}).code == 0
        assert fleetup(*add_args(base / name, base / "v1", "1.0.0"), *extra,
                       env={"PW": "pw"}).code == 0
    return base


def _unreadable(tree: Path) -> list[str]:
    (tree / "lib" / "payload.bin").chmod(0)
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root reads any file; dropping that needs setpriv (util-linux)")
    # Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH obeys file modes like anyone.
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _wait_until_expired(repo: Path, name: str) -> None:
    raw = json.loads((repo / "public/metadata" / name).read_bytes())["signed"]["expires"]
    expires = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    while datetime.now(expires.tzinfo) <= expires:
        time.sleep(0.05)


BAD_INPUT = ["missing-source", "unreadable-source", "not-a-version", "duplicate",
             "duplicate-other-spelling", "missing-key", "foreign-key", "no-passphrase",
             "wrong-passphrase", "expired-on-refresh", "escaping-symlink"]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_error_line_and_leaves_the_repository_unchanged(
        baseline: Path, tmp_path: Path, case: str) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(baseline / ("encrypted" if "passphrase" in case else "plain"), repo)
    tree = sample_app(tmp_path / "src", "2.0.0", payload_size=500)
    args: list[str | Path] = add_args(repo, tree, "2.0.0")
    env: dict[str, str] = {}
    prefix: list[str] = []
    if case == "missing-source":
        args[2], expected = tmp_path / "nowhere", "not a directory"
    elif case == "unreadable-source":
        prefix, expected = _unreadable(tree), "cannot read"
    elif case == "not-a-version":
        args[-3], expected = "2.0.0-final-really", "not a version (PEP 440)"
    elif case == "duplicate":
        args[-3], expected = "1.0.0", "hello 1.0.0 (linux-x86_64) is already published"
    elif case == "duplicate-other-spelling":
        args[-3], expected = "1.0", "hello 1.0.0 (linux-x86_64) is already published"
    elif case == "missing-key":
        (repo / "keys/snapshot.key").unlink()
        expected = "the snapshot key is missing"
    elif case == "foreign-key":
        init_repo(tmp_path / "other")
        shutil.copy(tmp_path / "other/keys/targets.key", repo / "keys/targets.key")
        expected = "is not a targets key of this repository's root"
    elif case == "no-passphrase":
        expected = "it is encrypted: pass --passphrase-env VAR"
    elif case == "wrong-passphrase":
        args += ["--passphrase-env", "PW"]
        env, expected = {"PW": "not it"}, "wrong passphrase"
    elif case == "expired-on-refresh":
        shutil.rmtree(repo)
        assert fleetup("repo", "init", repo, "--expires", "targets=0.00001").code == 0
        _wait_until_expired(repo, "1.targets.json")
        args, expected = ["repo", "refresh", "--repo", repo], "targets metadata expired"
    elif case == "escaping-symlink":
        make_tree(tree, {"lib/escape": Link("../../../../etc/shadow")})
        expected = "symlink lib/escape -> ../../../../etc/shadow points outside the tree"
    before = fingerprint(repo)
    run = fleetup(*args, env=env, prefix=tuple(prefix))
    assert_one_error_line(run, expected)
    assert run.out == ""
    assert fingerprint(repo) == before


# -- a real full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test: a disk that really fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                           str(mount_point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def leave_free(disk: Path, nbytes: int) -> None:
    """Grow or shrink ``disk/filler`` so that exactly ``nbytes`` stay available."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - nbytes
    if size > 0:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)


def sweep_free_space(disk: Path, repo: Path, operation: Callable[[], Any]) -> list[str]:
    """Retry ``operation`` with 0, 1, 2, ... free pages until it succeeds; every failure
    must be a clean StorageError that left ``repo`` unchanged. Returns the failures."""
    failures = []
    for pages in range(200):
        leave_free(disk, pages * PAGE)
        before = fingerprint(repo)
        try:
            operation()
        except StorageError as e:
            failures.append(str(e))
        else:
            (disk / "filler").unlink(missing_ok=True)
            return failures
        assert "no space left on device" in failures[-1]
        assert fingerprint(repo) == before, f"changed by a failure with {pages} pages free"
    pytest.fail("the operation never succeeded")


def test_full_disk_at_every_page_of_a_release(small_disk: Path, tmp_path: Path) -> None:
    repo = small_disk / "repo"
    init_repo(repo)
    sample_app(tmp_path / "v1", "1.0.0", payload_size=2000)
    sample_app(tmp_path / "v2", "1.1.0", payload_size=2000)

    def publish(version: str, tree: str) -> Callable[[], Any]:
        return lambda: add_release(repo, ReleaseRequest(tmp_path / tree, APP, version,
                                                        PLATFORM))

    first = sweep_free_space(small_disk, repo, publish("1.0.0", "v1"))   # no delta
    second = sweep_free_space(small_disk, repo, publish("1.1.0", "v2"))  # with a delta
    rotation = sweep_free_space(small_disk, repo, lambda: rotate_key(repo, "root"))
    assert len(first) >= 5
    assert len(second) >= 5
    assert rotation                             # keys and metadata need room too
    assert any("publish" in f or "metadata" in f for f in first), first


def test_full_disk_through_the_cli(small_disk: Path, tmp_path: Path) -> None:
    repo = small_disk / "repo"
    assert fleetup("repo", "init", repo).code == 0
    tree = sample_app(tmp_path / "src", "1.0.0", payload_size=20_000)
    leave_free(small_disk, 0)
    before = fingerprint(repo)
    for args in (add_args(repo, tree, "1.0.0"), ["repo", "refresh", "--repo", repo],
                 ["keys", "rotate", "--repo", repo, "root"]):
        assert_one_error_line(fleetup(*args), "no space left on device")
        assert fingerprint(repo) == before
    assert_one_error_line(fleetup("repo", "init", small_disk / "another"),
                          "no space left on device")
    assert not (small_disk / "another").exists()
    (small_disk / "filler").unlink()
    assert fleetup(*add_args(repo, tree, "1.0.0")).code == 0


# -- SIGKILL in the middle of `release add` ---------------------------------------------------


class Observer:
    """Judges the served repository the way a device would: an unmodified Updater."""

    def __init__(self, server: StaticServer, repo: Path, workdir: Path) -> None:
        self.server = server
        self.trusted_root = (repo / "public/metadata/1.root.json").read_bytes()
        self.workdir = workdir
        self.count = 0

    def client(self, name: str | None = None) -> Updater:
        self.count += 1
        work = self.workdir / (name or f"client-{self.count}")
        for sub in ("metadata", "downloads"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        bootstrap = None if (work / "metadata/root.json").exists() else self.trusted_root
        return Updater(str(work / "metadata"), f"{self.server.url}repo/public/metadata/",
                       str(work / "downloads"), f"{self.server.url}repo/public/targets/",
                       bootstrap=bootstrap)

    def state(self, client: Updater | None = None) -> str:
        """``"old"`` (only 1.0.0) or ``"new"`` (1.0.0 and 1.1.0), all verified; else fail."""
        client = client or self.client()
        client.refresh()
        index = client.get_targetinfo(index_target_path(APP, PLATFORM))
        assert index is not None
        releases = parse_index(Path(client.download_target(index)).read_bytes())
        old = release_target_path(APP, PLATFORM, "1.0.0")
        new = release_target_path(APP, PLATFORM, "1.1.0")
        delta = f"{APP}/{PLATFORM}/deltas/{APP}-1.0.0_to_1.1.0.fdelta"
        names = [old] if releases == [old] else [old, new, delta]
        assert releases in ([old], sorted([old, new])), releases
        for name in names:
            info = client.get_targetinfo(name)
            assert info is not None, name
            client.download_target(info)            # length and hash verified
        if releases == [old]:
            assert client.get_targetinfo(new) is None
            return "old"
        return "new"


@pytest.fixture(scope="module")
def crash_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path,
                                                                          Observer]]:
    """A served directory ``www`` whose ``www/repo`` each test resets from a baseline."""
    work = tmp_path_factory.mktemp("crash")
    baseline = work / "baseline"
    init_repo(baseline)
    sample_app(work / "v1", "1.0.0", payload_size=16 << 10)
    sample_app(work / "v2", "1.1.0", payload_size=16 << 10)
    add_release(baseline, ReleaseRequest(work / "v1", APP, "1.0.0", PLATFORM))
    (work / "www").mkdir()
    with serve_directory(work / "www", work) as server:
        yield work, baseline, Observer(server, baseline, work / "clients")


def reset(work: Path, baseline: Path) -> Path:
    repo = work / "www" / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(baseline, repo)
    return repo


def judge_after_kill(work: Path, observer: Observer, repo: Path, steady: str) -> str:
    """The repository is old or new, never half; the next add finishes the job."""
    seen = observer.state()
    assert observer.state(observer.client(steady)) == seen   # a client that saw the old one
    again = fleetup_in_process(*add_args(repo, work / "v2", "1.1.0"))
    if seen == "new":
        assert_one_error_line(again, "hello 1.1.0 (linux-x86_64) is already published")
    else:
        assert again.code == 0, again.err
    assert observer.state() == "new"
    assert not (repo / ".staging").exists()
    return seen


KILLER = """
import os, signal, sys
kill_at, after, calls = int(os.environ["KILL_AT"]), os.environ["KILL_AFTER"] == "1", 0
real_replace = os.replace
def replace(*args, **kwargs):
    global calls
    calls += 1
    if calls == kill_at and not after:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(*args, **kwargs)
    if calls == kill_at and after:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from fleetup.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_killed(repo: Path, work: Path, kill_at: int, after: bool) -> int:
    done = subprocess.run([sys.executable, "-c", KILLER,
                           *map(str, add_args(repo, work / "v2", "1.1.0"))],
                          env={**os.environ, "KILL_AT": str(kill_at),
                               "KILL_AFTER": "1" if after else "0"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


@pytest.mark.slow
def test_sigkill_at_every_rename_of_a_release(
        crash_site: tuple[Path, Path, Observer]) -> None:
    # Every file fleetup publishes lands with a rename (os.replace): the process kills
    # itself (a real SIGKILL) just before its k-th rename, for every k, and once just
    # after the last one (the timestamp: the commit point).
    work, baseline, observer = crash_site
    seen = []
    kill_at = 0
    while True:
        kill_at += 1
        assert kill_at < 40, "release add never completed"
        repo = reset(work, baseline)
        steady = f"steady-{kill_at}"
        assert observer.state(observer.client(steady)) == "old"
        if run_killed(repo, work, kill_at, after=False) == 0:
            break
        seen.append(judge_after_kill(work, observer, repo, steady))
    assert seen == ["old"] * (kill_at - 1)
    assert kill_at - 1 >= 6                   # archive, index, delta, 3 metadata files
    repo = reset(work, baseline)
    assert observer.state(observer.client("steady-last")) == "old"
    assert run_killed(repo, work, kill_at - 1, after=True) == -signal.SIGKILL
    assert judge_after_kill(work, observer, repo, "steady-last") == "new"


@pytest.mark.slow
def test_sigkill_at_chosen_moments_of_a_real_fleetup_process(
        crash_site: tuple[Path, Path, Observer]) -> None:
    work, baseline, observer = crash_site
    repo = reset(work, baseline)
    started = time.monotonic()
    assert fleetup(*add_args(repo, work / "v2", "1.1.0")).code == 0
    full = time.monotonic() - started      # only to spread the kill points; never asserted

    moments: list[str | float] = ["staging-appears", *(full * f for f in (0.3, 0.6, 0.9))]
    for n, moment in enumerate(moments):
        repo = reset(work, baseline)
        steady = f"timed-{n}"
        assert observer.state(observer.client(steady)) == "old"
        process = subprocess.Popen([FLEETUP, *map(str, add_args(repo, work / "v2", "1.1.0"))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if moment == "staging-appears":
            while process.poll() is None and not (repo / ".staging").exists():
                time.sleep(0.001)
        else:
            assert isinstance(moment, float)
            time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait()
        judge_after_kill(work, observer, repo, steady)
