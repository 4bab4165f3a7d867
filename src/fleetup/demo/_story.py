"""``fleetup demo``: the whole story on embedded defaults, as real processes.

A publisher repository, a fleet server (SQLite, local files) and N agents, each its own
``fleetup agent run`` process with its own install root. Every step is the command a
user would type, run as a subprocess and shown. Then:

1. v1.0.0 is published and every device installs it;
2. v1.1.0 rolls out in stages, advancing on health;
3. v1.2.0 is broken: its first devices fail their health check and roll back to
   v1.1.0 by themselves, and the server pauses the rollout at its first stage;
4. a summary, and a verdict taken from the server's state and from the devices'
   install roots on disk — not from this script's own bookkeeping.

Exit code 0 only if the story happened that way. Soak times are short; nothing is faked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fleetup._manifest import scan_tree
from fleetup.demo._sample import write_release
from fleetup.errors import FleetupError

__all__ = ["DemoOptions", "run_demo"]

APP = "demo"
FLEETUP = [sys.executable, "-m", "fleetup"]
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    devices: int = 20
    serve: bool = False
    workdir: Path | None = None
    keep: bool = False
    port: int = 0
    act_timeout: float = 120.0


class DemoError(FleetupError):
    """The story did not happen as it should; the message says what differed."""


@dataclass
class _Fleet:
    """What the server says about the fleet right now."""

    versions: dict[str, str | None] = field(default_factory=dict)
    rollouts: dict[int, dict[str, Any]] = field(default_factory=dict)


class _Processes:
    """Every child process, each in its own process group, stopped on the way out."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self.children.append(child)
        return child

    def stop_all(self, grace: float = 15.0) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        # Supervised apps live in their own groups; an agent that stopped cleanly took
        # its app with it, one that was killed did not.
        self.children.clear()


class Story:
    """One run of the demo."""

    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.started = time.monotonic()
        self.work = options.workdir or Path(tempfile.mkdtemp(prefix="fleetup-demo-"))
        # Commands run from the work directory with these relative paths, as a user
        # would type them.
        self.repo = Path("publisher-repo")
        self.data = Path("server-data")
        self.logs = self.work / "logs"
        self.devices = [f"device-{i:02d}" for i in range(1, options.devices + 1)]
        self.processes = _Processes()
        self.port = options.port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.seen = _Fleet()
        self.rollbacks: list[tuple[str, str, str]] = []
        self.first_stage: list[str] = []

    # -- output ----------------------------------------------------------------------

    def say(self, message: str, style: str = "") -> None:
        stamp = f"[dim]{time.monotonic() - self.started:6.1f}s[/dim]"
        self.console.print(f"{stamp}  {message}", style=style, highlight=False)

    def act(self, title: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{title}")

    # -- running commands ------------------------------------------------------------

    def fleetup(self, *args: str, show: bool = True, token: str | None = None) -> str:
        """Run a ``fleetup`` command as a user would; returns its stdout."""
        if show:
            shown = " ".join(a if " " not in a else repr(a) for a in args)
            self.say(f"[cyan]$ fleetup {shown}[/cyan]")
        env = {**os.environ, "FLEETUP_TOKEN": token or self.tokens.get("admin", "")}
        result = subprocess.run([*FLEETUP, *args], capture_output=True, text=True, env=env,
                                cwd=self.work, check=False, timeout=300)
        if result.returncode != 0:
            raise DemoError(f"`fleetup {' '.join(args)}` failed: "
                             f"{(result.stderr.strip().splitlines() or ['?'])[-1]}")
        return result.stdout

    def api(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=10,
                             headers={"Authorization": f"Bearer {self.tokens['viewer']}"})
        response.raise_for_status()
        return response.json()

    # -- the story ---------------------------------------------------------------------

    def run(self) -> int:
        self.console.print(f"[bold]fleetup demo[/bold]: a publisher, a fleet server and "
                           f"{len(self.devices)} devices, as real processes in {self.work}")
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.set_up()
            self.act_one()
            self.act_two()
            self.act_three()
            problems = self.verify()
            self.summary()
            if problems:
                for problem in problems:
                    self.say(f"[red]✗ {problem}[/red]")
                self.say(f"[red]the story did not happen as it should (logs: {self.logs})")
                return 1
            self.say("[green]✓ verified from the server's state and every device's disk")
            if self.options.serve:
                self.serve()
            return 0
        except DemoError as e:
            self.say(f"[red]✗ {e}[/red]")
            self.say(f"logs: {self.logs}")
            return 1
        finally:
            self.processes.stop_all()
            if not (self.options.keep or self.options.workdir):
                shutil.rmtree(self.work, ignore_errors=True)

    def set_up(self) -> None:
        self.act("Set-up: a publisher repository, a fleet server, enrolled devices")
        self.fleetup("repo", "init", str(self.repo))
        self.fleetup("admin", "repo", "init", "--from", str(self.repo), "--data", str(self.data))
        for role in ("admin", "viewer"):
            self.tokens[role] = self.fleetup("admin", "token", "create", "--role", role,
                                             "--data", str(self.data), show=role == "admin"
                                             ).strip()
        enrollment = self.fleetup("admin", "enrollment-token", "create",
                                  "--data", str(self.data)).strip()
        self.start_server()
        for device in self.devices:
            self.start_agent(device, enrollment)
        self.say(f"[cyan]$ fleetup agent -c devices/<id>.toml run[/cyan]   "
                 f"× {len(self.devices)} devices")

    def publish(self, version: str, notes: str, broken: bool = False) -> None:
        tree = write_release(self.work / "builds" / version, version, broken=broken)
        tree = tree.relative_to(self.work)
        out = self.fleetup("release", "add", str(tree), "--repo", str(self.repo), "--app", APP,
                           "--version", version, "--notes", notes, "--health-cmd", "./health.sh",
                           "--health-timeout", "10", "--json")
        facts = json.loads(out)
        self.digests[version] = facts["tree_digest"]
        deltas = ", ".join(f"from {v}: {s} B" for v, s in facts["deltas"].items())
        self.say(f"published {APP} {version}: {facts['archive_size']} B archive"
                 + (f"; deltas {deltas}" if deltas else ""))

    def start_server(self) -> None:
        env = {"FLEETUP_SERVER_CHECKIN_INTERVAL": "1", "FLEETUP_SERVER_CHECKIN_JITTER": "0.3",
               "FLEETUP_SERVER_ROLLOUT_TICK_SECONDS": "0.5",
               "FLEETUP_SERVER_CACHE_SECONDS": "0.5", "FLEETUP_SERVER_FLUSH_SECONDS": "0.5"}
        self.say(f"[cyan]$ fleetup server --data {self.data} --port {self.port}[/cyan]")
        self.processes.start([*FLEETUP, "server", "--data", str(self.work / self.data),
                              "--port", str(self.port)], self.logs / "server.log", env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    self.say(f"fleet server up at {self.url} (dashboard at {self.url}/)")
                    return
            time.sleep(0.2)
        raise DemoError(f"the server did not start (see {self.logs / 'server.log'})")

    def start_agent(self, device: str, enrollment: str) -> None:
        root = self.work / "devices" / device
        root.mkdir(parents=True)
        config = root.parent / f"{device}.toml"
        config.write_text(f"""app = "{APP}"
root = "{root}"
server_url = "{self.url}/"
enrollment_token = "{enrollment}"
trusted_root = "{self.work / self.repo / 'public' / 'metadata' / '1.root.json'}"
device_id = "{device}"
poll_interval = 2
poll_jitter = 0.3
tags = {{ site = "{'lab-a' if int(device[-2:]) % 2 else 'lab-b'}" }}

[process]
command = ["./bin/app"]
stop_timeout = 3

[health]
startup_grace = 1.0
crash_loop_restarts = 3

[modules]
enabled = false
""")
        self.processes.start([*FLEETUP, "agent", "-c", str(config), "run"],
                             self.logs / f"{device}.log")

    def act_one(self) -> None:
        self.act("1. v1.0.0 is published and every device installs it")
        self.publish("1.0.0", "first release")
        self.push("1.0.0")
        rollout = self.start_rollout("1.0.0", [100.0], soak=0)
        self.watch(rollout, lambda f: _all_on(f, self.devices, "1.0.0")
                   and f.rollouts[rollout]["state"] == "completed",
                   "every device on 1.0.0")

    def act_two(self) -> None:
        self.act("2. v1.1.0 rolls out in stages, advancing on health")
        self.publish("1.1.0", "faster start-up")
        self.push("1.1.0")
        rollout = self.start_rollout("1.1.0", self.stages("1.1.0"), soak=3)
        self.watch(rollout, lambda f: _all_on(f, self.devices, "1.1.0")
                   and f.rollouts[rollout]["state"] == "completed",
                   "every device on 1.1.0 and the rollout completed")

    def act_three(self) -> None:
        self.act("3. v1.2.0 is broken: its first stage fails and rolls back, the rollout stops")
        self.publish("1.2.0", "new storage engine", broken=True)
        self.push("1.2.0")
        stages = self.stages("1.2.0")
        rollout = self.start_rollout("1.2.0", stages, soak=5)
        cohorts = self.api(f"/api/v1/rollouts/{rollout}/devices?limit=1000")["data"]
        self.first_stage = [d["device_id"] for d in cohorts if d["cohort"] < stages[0]]
        self.watch(rollout, lambda f: f.rollouts[rollout]["state"] == "paused"
                   and _all_on(f, self.devices, "1.1.0")
                   and len(self.rollbacks) >= len(self.first_stage),
                   "the rollout paused and its devices back on 1.1.0")

    def stages(self, version: str) -> list[float]:
        """10 → 50 → 100 %, with a first stage big enough to hold at least one device of
        this (small) fleet. Cohorts hash a key the server made for each device, so the
        server's dry run (with the id the rollout will get) says what a stage reaches."""
        wanted = max(1, round(len(self.devices) * 0.1))
        first = 10.0
        while first < 99:
            stages = [first, max(50.0, first + 1), 100.0]
            reach = self.dry_run(version, stages)
            if reach[0]["reached"] >= wanted:
                return stages
            first += 5.0
        return [99.0, 100.0]

    def dry_run(self, version: str, stages: list[float]) -> list[dict[str, Any]]:
        response = httpx.post(self.url + "/api/v1/rollouts/dry-run", timeout=10, json={
            "app": APP, "version": version, "channel": "stable", "stages": stages},
            headers={"Authorization": f"Bearer {self.tokens['viewer']}"})
        response.raise_for_status()
        reach: list[dict[str, Any]] = response.json()["stages"]
        return reach

    def push(self, version: str) -> None:
        self.fleetup("release", "push", "--repo", str(self.repo), "--app", APP,
                     "--version", version, "--server", self.url)

    def start_rollout(self, version: str, stages: list[float], soak: int) -> int:
        out = self.fleetup("rollout", "start", "--server", self.url, "--app", APP,
                           "--version", version, "--channel", "stable",
                           "--stages", ",".join(f"{s:g}" for s in stages),
                           "--soak", str(soak), "--min-reports", "1",
                           "--max-failure-rate", "0.2", "--json")
        info = json.loads(out)
        return int(info["id"])

    # -- watching ------------------------------------------------------------------------

    def poll(self) -> _Fleet:
        devices = self.api("/api/v1/devices?limit=1000")["data"]
        rollouts = self.api("/api/v1/rollouts?limit=100")["data"]
        return _Fleet({d["id"]: d["version"] for d in devices},
                      {r["id"]: r for r in rollouts})

    def watch(self, rollout: int, done: Callable[[_Fleet], bool], what: str) -> None:
        deadline = time.monotonic() + self.options.act_timeout
        while True:
            fleet = self.poll()
            self.report(fleet)
            if rollout in fleet.rollouts and done(fleet):
                counts = Counter(v for v in fleet.versions.values())
                spread = ", ".join(f"{n} on {v}" for v, n in sorted(counts.items(), key=str))
                self.say(f"[green]✓ {what}[/green] ({spread})")
                return
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what}")
            time.sleep(0.5)

    def report(self, fleet: _Fleet) -> None:
        """One line per notable change since the last poll."""
        for device, version in sorted(fleet.versions.items()):
            before = self.seen.versions.get(device)
            if version != before and not (before and version and _went_back(before, version)):
                self.say(f"{device} installed {version}")
        for rid, rollout in sorted(fleet.rollouts.items()):
            if rollout["state"] in ("active", "paused"):
                self.report_failures(rid, rollout["version"])
        for rid, rollout in sorted(fleet.rollouts.items()):
            old = self.seen.rollouts.get(rid)
            stage = (rollout["state"], rollout["stage_index"])
            if old is not None and (old["state"], old["stage_index"]) == stage:
                continue
            text = f"rollout {rid} ({rollout['version']}): {rollout['state']}, stage " \
                   f"{rollout['stage_index'] + 1}/{len(rollout['stages'])} " \
                   f"({rollout['stage_percent']:g}%)"
            if rollout.get("state_reason"):
                text += f" — {rollout['state_reason']}"
            style = "bold red" if rollout["state"] == "paused" else "bold"
            self.say(f"[{style}]{text}[/{style}]")
        self.seen = fleet

    def report_failures(self, rollout: int, version: str) -> None:
        """Devices of a rollout that reported a failure: they rolled back on their own,
        often before the server ever saw them run the new version."""
        known = {device for device, _, _ in self.rollbacks}
        rows = self.api(f"/api/v1/rollouts/{rollout}/devices?limit=1000")["data"]
        for row in rows:
            if row["outcome"] == "failed" and row["device_id"] not in known:
                reason = self.failure_reason(row["device_id"], version)
                self.rollbacks.append((row["device_id"], version, reason))
                self.say(f"[yellow]{row['device_id']} tried {version}, failed its health "
                         f"check and rolled back by itself: {reason}")

    def failure_reason(self, device: str, version: str) -> str:
        events = self.api(f"/api/v1/devices/{device}/history?limit=50")["data"]
        for event in events:
            if event["type"] == "health-failed" and event.get("version") == version:
                return str(event["reason"])
        return "reported a failure"

    # -- the verdict -------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Check the story against the server's state and each device's disk."""
        problems = []
        fleet = self.poll()
        states = {r["version"]: r for r in fleet.rollouts.values()}
        expect = {"1.0.0": "completed", "1.1.0": "completed", "1.2.0": "paused"}
        for version, state in expect.items():
            got = states.get(version, {}).get("state")
            if got != state:
                problems.append(f"rollout of {version} is {got}, expected {state}")
        broken = states.get("1.2.0", {})
        if broken.get("stage_index") != 0:
            problems.append("the broken rollout went past its first stage")
        for device in self.devices:
            root = self.work / "devices" / device
            current = root / "current"
            if not current.is_symlink() or scan_tree(current.resolve()).digest() != \
                    self.digests["1.1.0"]:
                problems.append(f"{device}: current is not the signed 1.1.0 tree")
            failed = _json(root / ".fleetup" / "failed.json")
            history = [json.loads(line) for line in
                       (root / ".fleetup" / "history.jsonl").read_text().splitlines()]
            tried = any(h.get("attempted") == "1.2.0" for h in history)
            if device in self.first_stage and ("1.2.0" not in failed or not tried):
                problems.append(f"{device} was in the first stage but did not try and "
                                f"reject 1.2.0")
            if device not in self.first_stage and tried:
                problems.append(f"{device} got 1.2.0 although the rollout had paused")
        if not self.first_stage:
            problems.append("no device was in the broken release's first stage")
        return problems

    def summary(self) -> None:
        self.act("4. Summary")
        fleet = self.poll()
        versions = Counter(v or "nothing" for v in fleet.versions.values())
        table = Table(title="devices per version", show_edge=False)
        table.add_column("version")
        table.add_column("devices", justify="right")
        for version, count in sorted(versions.items()):
            table.add_row(version, str(count))
        self.console.print(table)
        table = Table(title="rollouts", show_edge=False)
        for column in ("id", "version", "stages", "state", "reached", "why"):
            table.add_column(column)
        for rid, r in sorted(fleet.rollouts.items()):
            table.add_row(str(rid), r["version"], " → ".join(f"{s:g}%" for s in r["stages"]),
                          r["state"], f"stage {r['stage_index'] + 1} ({r['stage_percent']:g}%)",
                          r.get("state_reason") or "")
        self.console.print(table)
        table = Table(title="rollbacks", show_edge=False)
        for column in ("device", "from", "to", "why"):
            table.add_column(column)
        for device, version, reason in self.rollbacks:
            table.add_row(device, version, fleet.versions.get(device) or "-", reason)
        self.console.print(table)

    def serve(self) -> None:
        self.act("The fleet keeps running")
        self.console.print(f"dashboard:    {self.url}/")
        self.console.print(f"viewer token: {self.tokens['viewer']}")
        self.console.print(f"admin token:  {self.tokens['admin']}")
        self.console.print(f"files:        {self.work}")
        self.console.print("press Ctrl-C to stop everything")
        stop = False

        def handler(_signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.say("stopping the server and the agents")


def _all_on(fleet: _Fleet, devices: list[str], version: str) -> bool:
    return all(fleet.versions.get(d) == version for d in devices)


def _went_back(before: str, after: str) -> bool:
    from packaging.version import Version

    return Version(after) < Version(before)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the exit code (0 only if the story verified)."""
    return Story(options, console or Console(highlight=False, soft_wrap=True)).run()
