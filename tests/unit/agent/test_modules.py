"""Plugin modules loaded from ``current/modules/``: hook order, isolation, reloads."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetup._manifest import scan_tree
from fleetup.agent._modules import ModuleHost
from tests.support.trees import make_tree

HOOKS = ("init", "run", "tick", "cleanup")


def module_source(log: Path, tag: str, *, raise_in: str = "", sleep_in: str = "",
                  hooks: tuple[str, ...] = HOOKS) -> str:
    """A module whose hooks append ``<tag>:<hook>`` to ``log``."""
    lines = ["import time", f"LOG = {str(log)!r}", "",
             "def _note(hook):",
             "    with open(LOG, 'a') as f:",
             f"        f.write({tag!r} + ':' + hook + '\\n')", ""]
    for hook in hooks:
        lines.append(f"def {hook}():")
        lines.append(f"    _note({hook!r})")
        if hook == raise_in:
            lines.append(f"    raise RuntimeError('{tag} broke in {hook}')")
        if hook == sleep_in:
            lines.append("    time.sleep(2)")
        lines.append("")
    return "\n".join(lines)


class Releases:
    """``releases/<v>/modules/*.py`` and a ``current`` link, plus the shared hook log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "hooks.log"

    def add(self, version: str, modules: dict[str, str]) -> Path:
        return make_tree(self.root / "releases" / version,
                         {"VERSION": version, **{f"modules/{n}": s for n, s in modules.items()}})

    def switch(self, version: str) -> None:
        tmp = self.root / "current.tmp"
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, self.root / "current")

    @property
    def current(self) -> Path:
        return self.root / "current"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def releases(tmp_path: Path) -> Releases:
    return Releases(tmp_path)


@pytest.fixture
def errors() -> Iterator[list[str]]:
    """Messages logged at ERROR by ``fleetup.modules`` (whatever the logging setup)."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep(logging.ERROR)
    logger = logging.getLogger("fleetup.modules")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


@pytest.fixture
def hosts() -> Iterator[list[ModuleHost]]:
    made: list[ModuleHost] = []
    yield made
    for host in made:
        host.unload()


def host_for(hosts: list[ModuleHost], releases: Releases, hook_timeout: float = 5.0
             ) -> ModuleHost:
    host = ModuleHost(releases.current, hook_timeout=hook_timeout, load_entry_points=False)
    hosts.append(host)
    return host


def test_hooks_run_in_order(releases: Releases, hosts: list[ModuleHost]) -> None:
    releases.add("1.0", {"a.py": module_source(releases.log, "a"),
                         "b.py": module_source(releases.log, "b")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    host.tick()
    host.tick()
    host.unload()
    assert releases.lines() == ["a:init", "a:run", "b:init", "b:run",
                                "a:tick", "b:tick", "a:tick", "b:tick",
                                "a:cleanup", "b:cleanup"]
    assert host.modules == []


def test_call_counts_and_describe(releases: Releases, hosts: list[ModuleHost]) -> None:
    releases.add("1.0", {"a.py": module_source(releases.log, "a")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    for _ in range(3):
        host.tick()
    [described] = host.describe()
    assert described["name"] == "a"
    assert described["enabled"] is True
    assert described["error"] == ""
    assert described["calls"] == {"init": 1, "run": 1, "tick": 3}
    assert str(described["origin"]).endswith("releases/1.0/modules/a.py")


def test_missing_hooks_are_fine_and_private_files_are_skipped(releases: Releases,
                                                              hosts: list[ModuleHost]) -> None:
    releases.add("1.0", {"only_tick.py": module_source(releases.log, "t", hooks=("tick",)),
                         "_helper.py": module_source(releases.log, "helper"),
                         "notes.txt": "not a module"})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    host.tick()
    host.unload()
    assert releases.lines() == ["t:tick"]


def test_a_module_raising_in_init_is_disabled_and_the_others_go_on(
        releases: Releases, hosts: list[ModuleHost], errors: list[str]) -> None:
    releases.add("1.0", {"bad.py": module_source(releases.log, "bad", raise_in="init"),
                         "good.py": module_source(releases.log, "good")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    host.tick()
    host.unload()
    # The bad module never ran, ticked or cleaned up: it was never initialized.
    assert releases.lines() == ["bad:init", "good:init", "good:run", "good:tick",
                                "good:cleanup"]
    assert errors == ["module bad disabled: init raised RuntimeError: bad broke in init"]


def test_a_module_raising_in_tick_is_disabled_but_cleaned_up(
        releases: Releases, hosts: list[ModuleHost], errors: list[str]) -> None:
    releases.add("1.0", {"bad.py": module_source(releases.log, "bad", raise_in="tick"),
                         "good.py": module_source(releases.log, "good")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    host.tick()
    host.tick()
    bad = next(m for m in host.modules if m.name == "bad")
    assert not bad.enabled
    assert bad.error == "tick: RuntimeError: bad broke in tick"
    host.unload()
    assert releases.lines() == ["bad:init", "bad:run", "good:init", "good:run",
                                "bad:tick", "good:tick", "good:tick",
                                "bad:cleanup", "good:cleanup"]
    assert len(errors) == 1


def test_a_module_that_does_not_import_is_disabled(releases: Releases,
                                                   hosts: list[ModuleHost],
                                                   errors: list[str]) -> None:
    releases.add("1.0", {"broken.py": "def init(:\n",
                         "crashes.py": "raise ImportError('needs numpy')\n",
                         "good.py": module_source(releases.log, "good")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    state = {m["name"]: (m["enabled"], str(m["error"]).split(":")[:2])
             for m in host.describe()}
    assert state == {"broken": (False, ["import", " SyntaxError"]),
                     "crashes": (False, ["import", " ImportError"]),
                     "good": (True, [""])}
    assert releases.lines() == ["good:init", "good:run"]
    assert len(errors) == 2


def test_a_hook_that_is_not_callable_disables_its_module(releases: Releases,
                                                         hosts: list[ModuleHost]) -> None:
    releases.add("1.0", {"odd.py": "tick = 3\n"})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    host.tick()
    assert host.describe()[0]["error"] == "tick: TypeError: tick is not callable"


def test_a_hook_past_the_timeout_disables_its_module(releases: Releases,
                                                     hosts: list[ModuleHost],
                                                     errors: list[str]) -> None:
    releases.add("1.0", {"slow.py": module_source(releases.log, "slow", sleep_in="tick"),
                         "good.py": module_source(releases.log, "good")})
    releases.switch("1.0")
    host = host_for(hosts, releases, hook_timeout=0.2)
    host.load()
    host.tick()          # slow's tick is abandoned after 0.2 s
    host.tick()
    slow = next(m for m in host.modules if m.name == "slow")
    assert not slow.enabled
    assert slow.error == "tick: TimeoutError: did not return within 0.2s"
    assert releases.lines().count("slow:tick") == 1
    assert releases.lines().count("good:tick") == 2
    assert errors == ["module slow disabled: tick raised TimeoutError: did not return "
                      "within 0.2s"]


def test_reload_after_a_switch_cleans_up_the_old_modules_first(releases: Releases,
                                                               hosts: list[ModuleHost]) -> None:
    releases.add("1.0", {"m.py": module_source(releases.log, "m@1.0"),
                         "gone.py": module_source(releases.log, "gone@1.0")})
    releases.add("1.1", {"m.py": module_source(releases.log, "m@1.1")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    releases.switch("1.1")
    host.load()
    host.tick()
    assert releases.lines() == ["gone@1.0:init", "gone@1.0:run", "m@1.0:init", "m@1.0:run",
                                "gone@1.0:cleanup", "m@1.0:cleanup",
                                "m@1.1:init", "m@1.1:run", "m@1.1:tick"]
    assert [m.name for m in host.modules] == ["m"]
    assert "releases/1.1/" in host.modules[0].origin


def test_unloading_forgets_the_imported_modules(releases: Releases,
                                                hosts: list[ModuleHost]) -> None:
    releases.add("1.0", {"m.py": module_source(releases.log, "m")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    module = host.modules[0].module
    assert module is not None
    assert sys.modules.get(module.__name__) is module
    host.unload()
    assert module.__name__ not in sys.modules


def test_no_modules_folder_means_no_modules(releases: Releases,
                                           hosts: list[ModuleHost]) -> None:
    host = host_for(hosts, releases)
    host.load()  # nothing installed yet
    assert host.modules == []
    releases.add("1.0", {})
    releases.switch("1.0")
    host.load()
    assert host.modules == []


def test_loading_leaves_the_release_tree_byte_for_byte(releases: Releases,
                                                       hosts: list[ModuleHost],
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    # On a device Python writes bytecode unless told not to: that would put
    # modules/__pycache__/ into the installed tree and `verify` would call it damaged.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    tree = releases.add("1.0", {"m.py": module_source(releases.log, "m")})
    releases.switch("1.0")
    before = scan_tree(tree)
    host = host_for(hosts, releases)
    host.load()
    host.tick()
    host.unload()
    assert releases.lines()[-1] == "m:cleanup"
    assert scan_tree(tree).diff(before) == []


def test_entry_point_modules(releases: Releases, hosts: list[ModuleHost],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    points = [importlib.metadata.EntryPoint("stdlib_json", "json", "fleetup.modules"),
              importlib.metadata.EntryPoint("not_a_module", "json:dumps", "fleetup.modules"),
              importlib.metadata.EntryPoint("missing", "no_such_pkg_x", "fleetup.modules")]

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        assert group == "fleetup.modules"
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    host = ModuleHost(releases.current, load_entry_points=True)
    hosts.append(host)
    host.load()
    state = {m["name"]: (m["enabled"], m["origin"]) for m in host.describe()}
    assert state == {"stdlib_json": (True, "entry point json"),
                     "not_a_module": (False, "entry point json:dumps"),
                     "missing": (False, "entry point no_such_pkg_x")}


def test_flags_reach_on_flags_when_they_change(releases: Releases,
                                               hosts: list[ModuleHost]) -> None:
    """``on_flags(flags)`` gets the fleet server's feature flags once per change, and
    again after a reload (new modules must learn them); modules without it are fine."""
    source = "\n".join([f"LOG = {str(releases.log)!r}", "",
                        "def on_flags(flags):",
                        "    with open(LOG, 'a') as f:",
                        "        f.write(repr(sorted(flags.items())) + '\\n')",
                        "    flags['mine'] = 1  # a copy: changes nothing elsewhere", ""])
    releases.add("1.0", {"a.py": source, "b.py": module_source(releases.log, "b")})
    releases.switch("1.0")
    host = host_for(hosts, releases)
    host.load()
    flags = {"color": "blue", "beta": True}
    host.deliver_flags(flags)
    host.deliver_flags(dict(flags))
    host.deliver_flags({"color": "red"})
    host.load()
    host.deliver_flags({"color": "red"})
    assert [line for line in releases.lines() if line.startswith("[")] == [
        "[('beta', True), ('color', 'blue')]", "[('color', 'red')]", "[('color', 'red')]"]
    assert flags == {"color": "blue", "beta": True}
    assert all(m.enabled for m in host.modules)
