"""Plugin modules with ``init / run / tick / cleanup`` hooks, loaded from the release.

Modules live in the installed release (``current/modules/*.py``) or are installed
Python packages registering an entry point in the group ``fleetup.modules``. The daemon
loads them after start and after every switch (unloading the old ones first): ``init``
and ``run`` once on load, ``tick`` every ``tick_interval`` seconds, ``cleanup`` on
unload, ``on_flags(flags)`` with the fleet server's feature flags when they change
(at the next tick, and after a load). Every hook may be missing. A hook that raises
or runs past ``hook_timeout`` disables its module (logged, with the reason); the agent
and the other modules go on. Modules see the same ``FLEETUP_*`` environment variables as the app.
Hooks run in a worker thread so a stuck one cannot stall the agent.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

__all__ = ["LoadedModule", "ModuleHost"]

log = logging.getLogger("fleetup.modules")

HOOKS = ("init", "run", "tick", "cleanup", "on_flags")
ENTRY_POINT_GROUP = "fleetup.modules"


@dataclass
class LoadedModule:
    name: str
    module: ModuleType | None
    origin: str
    enabled: bool = True
    initialized: bool = False
    error: str = ""
    calls: dict[str, int] = field(default_factory=dict)


class ModuleHost:
    """Loads, runs and unloads the modules of the installed release."""

    def __init__(self, current: Path, *, hook_timeout: float = 30.0,
                 load_entry_points: bool = True,
                 environment: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.current = current
        self.environment = environment
        self.hook_timeout = hook_timeout
        self.load_entry_points = load_entry_points
        self.modules: list[LoadedModule] = []
        self._generation = 0
        self._delivered: tuple[int, list[tuple[str, object]]] | None = None

    def load(self) -> None:
        """Unload what is loaded, then load and ``init``/``run`` the current modules."""
        self.unload()
        if self.environment is not None:
            # Modules run inside the agent; they learn their context (FLEETUP_ROOT,
            # FLEETUP_DATA, FLEETUP_VERSION, ...) from the environment, as the app does.
            os.environ.update(self.environment())
        self._generation += 1
        folder = self.current / "modules"
        if folder.is_dir():
            for path in sorted(folder.resolve().glob("*.py")):
                if not path.name.startswith("_"):
                    self.modules.append(self._import_file(path))
        if self.load_entry_points:
            for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                self.modules.append(self._import_entry_point(entry))
        for loaded in self.modules:
            if self._call(loaded, "init"):
                loaded.initialized = True
                self._call(loaded, "run")
        names = ", ".join(m.name for m in self.modules if m.enabled) or "none"
        log.info("modules loaded: %s", names)

    def tick(self) -> None:
        for loaded in self.modules:
            self._call(loaded, "tick")

    def deliver_flags(self, flags: Mapping[str, object]) -> None:
        """Call ``on_flags(flags)`` of each module that has it, when the flags changed
        since they were last delivered or the modules were loaded anew (each gets a copy:
        one module's change is not another's input)."""
        key = (self._generation, sorted(flags.items()))
        if key == self._delivered:
            return
        self._delivered = key
        for loaded in self.modules:
            self._call(loaded, "on_flags", args=(dict(flags),))

    def unload(self) -> None:
        """``cleanup`` every initialized module, then forget them all."""
        for loaded in self.modules:
            if loaded.initialized:
                self._call(loaded, "cleanup", even_if_disabled=True)
            if loaded.module is not None:
                sys.modules.pop(loaded.module.__name__, None)
        self.modules = []

    def describe(self) -> list[dict[str, object]]:
        return [{"name": m.name, "origin": m.origin, "enabled": m.enabled, "error": m.error,
                 "calls": dict(m.calls)} for m in self.modules]

    def _import_file(self, path: Path) -> LoadedModule:
        name = f"fleetup_module_{self._generation}_{path.stem}"
        loaded = LoadedModule(path.stem, None, str(path))
        try:
            spec = importlib.util.spec_from_file_location(
                name, path, loader=_ReleaseFileLoader(name, str(path)))
            if spec is None or spec.loader is None:
                raise ImportError("not a loadable Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded.module = module
        except Exception as e:  # noqa: BLE001 - isolating third-party module code
            sys.modules.pop(name, None)
            self._disable(loaded, "import", e)
        return loaded

    def _import_entry_point(self, entry: importlib.metadata.EntryPoint) -> LoadedModule:
        loaded = LoadedModule(entry.name, None, f"entry point {entry.value}")
        try:
            value = entry.load()
            if not isinstance(value, ModuleType):
                raise TypeError("entry point must name a module")
            loaded.module = value
        except Exception as e:  # noqa: BLE001 - isolating third-party module code
            self._disable(loaded, "import", e)
        return loaded

    def _call(self, loaded: LoadedModule, hook: str, even_if_disabled: bool = False,
              args: tuple[object, ...] = ()) -> bool:
        if loaded.module is None or not (loaded.enabled or even_if_disabled):
            return False
        function = getattr(loaded.module, hook, None)
        if function is None:
            return True
        if not callable(function):
            self._disable(loaded, hook, TypeError(f"{hook} is not callable"))
            return False
        error = _run_with_timeout(functools.partial(function, *args), self.hook_timeout)
        loaded.calls[hook] = loaded.calls.get(hook, 0) + 1
        if error is not None:
            self._disable(loaded, hook, error)
            return False
        return True

    def _disable(self, loaded: LoadedModule, hook: str, error: BaseException) -> None:
        loaded.enabled = False
        loaded.error = f"{hook}: {type(error).__name__}: {error}"
        log.error("module %s disabled: %s raised %s: %s", loaded.name, hook,
                  type(error).__name__, error)


class _ReleaseFileLoader(importlib.machinery.SourceFileLoader):
    """Imports a module file of the release without writing ``__pycache__`` into it:
    an installed tree must stay byte for byte the signed one (``verify``)."""

    def set_data(self, path: str, data: object, *, _mode: int = 0o666) -> None:
        return None


def _run_with_timeout(function: Callable[[], object], timeout: float) -> BaseException | None:
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported, module disabled
            outcome.append(e)

    worker = threading.Thread(target=target, name="fleetup-module-hook", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return TimeoutError(f"did not return within {timeout:g}s")
    return outcome[0] if outcome else None
