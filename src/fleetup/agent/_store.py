"""Everything the agent keeps on the device, and the one place that reads and writes it.

Layout under ``<root>``: ``releases/<version>/`` (immutable trees), ``current`` (a
symlink to ``releases/<version>``), ``data/`` (the app's, never touched) and the agent's
own ``.fleetup/``: lock, journal, history, failed set, device id, TUF metadata,
downloads, verified manifests, logs. Every write is atomic and durable (``_atomic``);
history lines are appended with fsync and read back tolerating a torn last line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetup._atomic import atomic_symlink, atomic_write, fsync_dir, storage_error
from fleetup._facts import ReleaseFacts
from fleetup._manifest import TreeManifest
from fleetup._versions import parse_version
from fleetup.agent._lifecycle import Journal
from fleetup.errors import FleetupError, StateError

__all__ = ["DeviceLayout", "DeviceStore"]


@dataclass(frozen=True, slots=True)
class DeviceLayout:
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def state(self) -> Path:
        return self.root / ".fleetup"

    @property
    def tuf(self) -> Path:
        return self.state / "tuf"

    @property
    def downloads(self) -> Path:
        return self.state / "downloads"

    @property
    def manifests(self) -> Path:
        return self.state / "manifests"

    @property
    def events(self) -> Path:
        return self.state / "events"

    @property
    def logs(self) -> Path:
        return self.state / "log"

    def release_dir(self, version: str) -> Path:
        return self.releases / version

    def partial_dir(self, version: str) -> Path:
        return self.releases / f"{version}.partial"


class DeviceStore:
    """Reads and writes the agent's on-device state under one :class:`DeviceLayout`."""

    def __init__(self, root: Path) -> None:
        self.layout = DeviceLayout(root)
        self._lock_depth = 0
        self._lock_guard = threading.Lock()

    def ensure(self) -> None:
        """Create the directories; ``data/`` too, but never anything inside it.

        Raises:
            StorageError: the disk refused.
        """
        try:
            for path in (self.layout.releases, self.layout.data, self.layout.tuf,
                         self.layout.downloads, self.layout.manifests, self.layout.logs):
                path.mkdir(parents=True, exist_ok=True)
            self.layout.state.chmod(0o700)
        except OSError as e:
            raise storage_error(e, f"prepare {self.layout.root}") from e

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the device lock: one agent process changes this root at a time.

        Re-entrant within one store (the daemon holds it for its lifetime and runs
        cycles that take it again).

        Raises:
            StateError: another process holds it.
        """
        with self.lock_if_free() as held:
            if not held:
                raise StateError(f"another fleetup agent is working on {self.layout.root}")
            yield

    @contextlib.contextmanager
    def lock_if_free(self) -> Iterator[bool]:
        """The device lock if no other process holds it; yields whether this store holds
        it now. Read-only commands use it to work beside a running daemon."""
        with self._lock_guard:
            if self._lock_depth:
                self._lock_depth += 1
                fd = -1
            else:
                self.ensure()
                fd = os.open(self.layout.state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    fd = -2
                else:
                    self._lock_depth = 1
        if fd == -2:
            yield False
            return
        try:
            yield True
        finally:
            with self._lock_guard:
                self._lock_depth -= 1
                if fd >= 0:
                    os.close(fd)

    # -- journal ---------------------------------------------------------------------

    @property
    def _journal_file(self) -> Path:
        return self.layout.state / "journal.json"

    def load_journal(self) -> Journal:
        """The persisted journal, or an idle one if there is none.

        Raises:
            StateError: the journal is corrupt.
        """
        try:
            return Journal.from_json(self._journal_file.read_bytes())
        except FileNotFoundError:
            return Journal()

    def save_journal(self, journal: Journal) -> None:
        atomic_write(self._journal_file, journal.to_json(), mode=0o600)

    # -- history ---------------------------------------------------------------------

    @property
    def _history_file(self) -> Path:
        return self.layout.state / "history.jsonl"

    def append_history(self, record: Mapping[str, Any]) -> None:
        """Append one finished update or rollback, durably.

        Raises:
            StorageError: the disk refused.
        """
        line = json.dumps(dict(record), sort_keys=True).encode() + b"\n"
        try:
            fd = os.open(self._history_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise storage_error(e, "record history") from e

    def history(self) -> list[dict[str, Any]]:
        """Past updates and rollbacks, oldest first; a record repeated by a handler
        that ran twice (after a crash) is listed once; a torn last line is skipped."""
        try:
            lines = self._history_file.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        seen: set[tuple[str, str]] = set()
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            key = (str(record.get("update_id")), str(record.get("result")))
            if key not in seen:
                seen.add(key)
                records.append(record)
        return records

    # -- failed releases -------------------------------------------------------------

    @property
    def _failed_file(self) -> Path:
        return self.layout.state / "failed.json"

    def failed(self) -> dict[str, str]:
        """Versions that failed their health check here, with the reason."""
        return self._read_json(self._failed_file, {})

    def mark_failed(self, version: str, reason: str) -> None:
        failed = self.failed()
        failed[version] = reason
        atomic_write(self._failed_file, json.dumps(failed, indent=1).encode(), mode=0o600)

    def clear_failed(self, version: str) -> None:
        failed = self.failed()
        if failed.pop(version, None) is not None:
            atomic_write(self._failed_file, json.dumps(failed, indent=1).encode(), mode=0o600)

    # -- identity and status ---------------------------------------------------------

    def device_id(self) -> str:
        """This device's stable id, made once (a random UUID) and kept."""
        path = self.layout.state / "device_id"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        self.ensure()
        value = uuid.uuid4().hex
        atomic_write(path, value.encode() + b"\n", mode=0o600)
        return value

    # -- the channel chosen on the device (``agent channel NAME``) ---------------------

    @property
    def _channel_file(self) -> Path:
        return self.layout.state / "channel.json"

    def channel_override(self) -> str | None:
        """The channel set on the device, overriding the config file's; ``None``: none.

        Raises:
            StateError: the file is corrupt.
        """
        value = self._read_json(self._channel_file, {}).get("channel")
        return value if isinstance(value, str) and value else None

    def save_channel_override(self, channel: str | None) -> None:
        """Set (or with ``None`` drop) the device's channel, durably."""
        if channel is None:
            with contextlib.suppress(FileNotFoundError):
                self._channel_file.unlink()
            return
        self.ensure()
        atomic_write(self._channel_file, json.dumps({"channel": channel}).encode(),
                     mode=0o600)

    def load_status(self) -> dict[str, Any]:
        return self._read_json(self.layout.state / "status.json", {})

    def save_status(self, status: Mapping[str, Any]) -> None:
        atomic_write(self.layout.state / "status.json",
                     json.dumps(dict(status), indent=1, sort_keys=True, default=str).encode(),
                     mode=0o600)

    def load_flags(self) -> dict[str, Any]:
        """The feature flags last delivered by the fleet server (``{}``: none)."""
        return self._read_json(self.layout.state / "flags.json", {})

    def save_flags(self, flags: Mapping[str, Any]) -> None:
        """Keep the flags for the app, which reads them as the same user (not secret)."""
        atomic_write(self.layout.state / "flags.json",
                     json.dumps(dict(flags), indent=1, sort_keys=True).encode(), mode=0o644)

    # -- installed trees -------------------------------------------------------------

    def installed_version(self) -> str | None:
        """The version ``current`` points to, or ``None`` if nothing is installed."""
        try:
            target = os.readlink(self.layout.current)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise storage_error(e, f"read {self.layout.current}") from e
        parent, _, version = target.rstrip("/").rpartition("/")
        if parent != "releases" or not version:
            raise StateError(f"{self.layout.current} points outside releases/: {target}")
        return version

    def kept_versions(self) -> list[str]:
        """Complete release trees on disk, oldest version first (PEP 440)."""
        try:
            names = [p.name for p in self.layout.releases.iterdir()
                     if p.is_dir() and not p.name.endswith(".partial")
                     and (self.layout.manifests / f"{p.name}.json").exists()]
        except FileNotFoundError:
            return []
        return sorted(names, key=_version_key)

    def point_current(self, version: str | None) -> None:
        """Swap ``current`` to ``releases/<version>`` in one rename, or remove it."""
        if version is None:
            try:
                self.layout.current.unlink()
                fsync_dir(self.layout.root)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise storage_error(e, f"remove {self.layout.current}") from e
            return
        atomic_symlink(self.layout.current, f"releases/{version}")

    def save_manifest(self, version: str, manifest: TreeManifest, facts: ReleaseFacts) -> None:
        body = {"facts": facts.to_custom(), "manifest": json.loads(manifest.to_json())}
        atomic_write(self.layout.manifests / f"{version}.json",
                     json.dumps(body, sort_keys=True).encode(), mode=0o600)

    def load_manifest(self, version: str) -> tuple[TreeManifest, ReleaseFacts]:
        """The manifest and facts verified when ``version`` was installed.

        Raises:
            StateError: missing or corrupt.
        """
        path = self.layout.manifests / f"{version}.json"
        try:
            body = json.loads(path.read_bytes())
            manifest = TreeManifest.from_json(json.dumps(body["manifest"]).encode())
            facts = ReleaseFacts.from_custom(body["facts"])
        except FileNotFoundError:
            raise StateError(f"no verified manifest for installed {version}") from None
        except (ValueError, KeyError, TypeError, FleetupError) as e:
            raise StateError(f"the manifest of {version} is corrupt: {e}") from e
        return manifest, facts

    def forget_manifest(self, version: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.layout.manifests / f"{version}.json").unlink()

    @staticmethod
    def _read_json(path: Path, default: dict[str, Any]) -> dict[str, Any]:
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return default
        except ValueError as e:
            raise StateError(f"{path} is corrupt: {e}") from e
        return value if isinstance(value, dict) else default


def _version_key(name: str) -> Any:
    try:
        return (0, parse_version(name))
    except FleetupError:
        return (1, name)
