"""The agent's configuration: AGENT.toml parsed into frozen, validated values.

Every key has a default except ``app``, ``root`` and the root of trust. Relative paths
are taken relative to the config file's directory. Errors name the key and the file in
one line (:class:`~fleetup.errors.ConfigError`).

::

    app = "hello"
    root = "/opt/hello"
    repo_url = "http://127.0.0.1:8080/"      # static mode
    trusted_root = "/etc/fleetup/root.json"
    channel = "stable"
    # platform, device_id, keep = 3, poll_interval = 3600, poll_jitter = 0.1
    # keep_days = 30  (also prune kept trees not current for that long; never the previous)
    # server_url + enrollment_token (fleet mode), tags = {site = "lab"}

    [policy]   auto = ["patch", "minor", "security", "hotfix"], window = "02:00-04:00",
               server_override = false  (fleet mode: may the server skip auto/window?)
               apply = "now" | "next-start" | "manual"  (the daemon: switch at once, or
               stage and switch when it next starts, or only on `agent apply`)
    [download] timeout, deadline, retries, backoff, max_backoff, bandwidth, deltas,
               require_https = false, allowed_hosts = []  (every URL fetched, redirects too)
    [process]  command = [...], restart_command = [...], env = {...}, stop_timeout
    [health]   command = [...], url, timeout, startup_grace, crash_loop_restarts, ...
               pre_command = [...]  (before the switch; non-zero holds the update back)
    [modules]  enabled, tick_interval
    [status_api] enabled, port             (loopback only)
    [fleet]    deadline = 60, max_reply = 1048576   (bounds on each fleet exchange)
    [log]      json, level
    [self_update] root, channel, timeout = 60, platform   (fleetup updates itself)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any, TypeVar

from fleetup._facts import check_name, default_platform
from fleetup._versions import UpdateType
from fleetup.agent._hosts import HostPolicy
from fleetup.errors import ConfigError, UsageError

__all__ = [
    "AgentConfig",
    "DownloadConfig",
    "FleetConfig",
    "HealthConfig",
    "MaintenanceWindow",
    "ModulesConfig",
    "PolicyConfig",
    "ProcessConfig",
    "PushConfig",
    "SelfUpdateConfig",
    "StatusApiConfig",
    "load_config",
]

T = TypeVar("T")

DEFAULT_AUTO = frozenset({UpdateType.PATCH, UpdateType.MINOR, UpdateType.SECURITY,
                          UpdateType.HOTFIX})
DEFAULT_WINDOW_EXEMPT = frozenset({UpdateType.SECURITY, UpdateType.HOTFIX})


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A daily window of local time, e.g. 22:00-04:00 (may wrap past midnight)."""

    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @classmethod
    def parse(cls, text: str) -> MaintenanceWindow:
        """Raises ValueError if ``text`` is not ``HH:MM-HH:MM``."""
        start, sep, end = text.partition("-")
        if not sep:
            raise ValueError(f"expected HH:MM-HH:MM, got {text!r}")
        window = cls(time.fromisoformat(start.strip()), time.fromisoformat(end.strip()))
        if window.start == window.end:  # would never open: updates would wait forever
            raise ValueError(f"the window {text.strip()!r} is empty (it starts as it ends)")
        return window


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Which update types install by themselves, and when."""

    auto: frozenset[UpdateType] = DEFAULT_AUTO
    window: MaintenanceWindow | None = None
    window_exempt: frozenset[UpdateType] = DEFAULT_WINDOW_EXEMPT
    # Fleet mode: may the server's choice skip ``auto`` and ``window``? Off by default,
    # so a server that was taken over cannot push what this device holds back. The
    # signed facts (channels, min_from, yanked) are enforced either way.
    server_override: bool = False
    # When the daemon switches to a release it staged: "now", when it "next-start"s, or
    # only when told ("manual": ``agent apply`` or the status API's install).
    apply: str = "now"


APPLY_POLICIES = ("now", "next-start", "manual")


@dataclass(frozen=True, slots=True)
class DownloadConfig:
    timeout: float = 30.0
    deadline: float = 3600.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    bandwidth: int = 0
    deltas: bool = True
    # A download that gets fewer than stall_bytes in stall_timeout seconds is aborted
    # (a 1 byte / 20 s trickle must not hold an update for the whole deadline).
    stall_timeout: float = 60.0
    stall_bytes: int = 1024
    # Which URLs may be fetched at all (see ``_hosts``); off by default.
    require_https: bool = False
    allowed_hosts: frozenset[str] = frozenset()

    @property
    def hosts(self) -> HostPolicy:
        return HostPolicy(self.require_https, self.allowed_hosts)


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """The application process the agent supervises (``run``) or restarts (``update``)."""

    command: tuple[str, ...] = ()
    restart_command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Local additions to each release's signed health check."""

    command: tuple[str, ...] = ()
    url: str | None = None
    timeout: float | None = None
    startup_grace: float = 2.0
    crash_loop_restarts: int = 3
    crash_loop_window: float = 60.0
    # Run before each switch (busy? battery? disk space?): non-zero holds the update back
    # until the next cycle, without blaming the release.
    pre_command: tuple[str, ...] = ()
    # Re-run the running release's health check every this many seconds and report it
    # (``health-report``: the fleet's control-group gate); 0 = off.
    interval: float = 0.0


@dataclass(frozen=True, slots=True)
class ModulesConfig:
    enabled: bool = True
    tick_interval: float = 10.0
    hook_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class StatusApiConfig:
    enabled: bool = False
    port: int = 8765


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Bounds on every exchange with the fleet server (which may be hostile): an overall
    ``deadline`` per request, connect to last byte, and a cap on the reply's size."""

    deadline: float = 60.0
    max_reply: int = 1 << 20


@dataclass(frozen=True, slots=True)
class PushConfig:
    """Fleet mode: a NATS server to hear "check now" from (``None``: poll only); the
    check-in follows after a random delay of up to ``jitter`` seconds."""

    url: str | None = None
    jitter: float = 10.0


@dataclass(frozen=True, slots=True)
class SelfUpdateConfig:
    """Where fleetup keeps its own releases (``root``), which channel it follows
    (``None``: the app's), and how long a new agent has to prove itself."""

    root: Path
    channel: str | None = None
    timeout: float = 60.0
    platform: str = ""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    app: str
    root: Path
    trusted_root: Path
    repo_url: str | None = None
    channel: str = "stable"
    platform: str = field(default_factory=default_platform)
    device_id: str | None = None
    keep: int = 3
    keep_days: float | None = None
    poll_interval: float = 3600.0
    poll_jitter: float = 0.1
    server_url: str | None = None
    enrollment_token: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    policy: PolicyConfig = PolicyConfig()
    download: DownloadConfig = DownloadConfig()
    process: ProcessConfig = ProcessConfig()
    health: HealthConfig = HealthConfig()
    modules: ModulesConfig = ModulesConfig()
    status_api: StatusApiConfig = StatusApiConfig()
    push: PushConfig = PushConfig()
    fleet: FleetConfig = FleetConfig()
    self_update: SelfUpdateConfig | None = None
    log_json: bool = False
    log_level: str = "INFO"
    source: Path | None = None

    @property
    def fleet_mode(self) -> bool:
        return self.server_url is not None

    @property
    def release_url(self) -> str | None:
        """Where the signed releases are: ``repo_url``, else the fleet server's ``/repo/``."""
        if self.repo_url is not None:
            return self.repo_url
        return None if self.server_url is None else self.server_url + "repo/"


def load_config(path: Path) -> AgentConfig:
    """Read and validate an agent config file.

    Raises:
        ConfigError: the file is missing, not TOML, or a key is missing or invalid.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    try:
        return _parse(raw, path.resolve().parent, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse(raw: Mapping[str, Any], base: Path, source: Path) -> AgentConfig:
    known = {"app", "root", "trusted_root", "repo_url", "channel", "platform", "device_id",
             "keep", "poll_interval", "poll_jitter", "server_url", "enrollment_token", "tags",
             "policy", "download", "process", "health", "modules", "status_api", "push",
             "fleet", "log", "keep_days", "self_update"}
    _no_unknown(raw, known, "")
    app_name = _get(raw, "app", str, required=True)
    repo_url = _opt(raw, "repo_url", str)
    server_url = _opt(raw, "server_url", str)
    if repo_url is None and server_url is None:
        raise ConfigError("set repo_url (static mode) or server_url (fleet mode)")
    try:
        check_name("app", app_name)
        channel = check_name("channel", _get(raw, "channel", str, "stable"))
        platform = check_name("platform", _get(raw, "platform", str, default_platform()))
    except UsageError as e:
        raise ConfigError(str(e)) from None
    keep = _get(raw, "keep", int, 3)
    if keep < 1:
        raise ConfigError("keep must be at least 1")
    log = _section(raw, "log")
    _no_unknown(log, {"json", "level"}, "log.")
    log_level = _get(log, "level", str, "INFO", prefix="log.").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log.level must be debug, info, warning, error or critical, "
                          f"got {log_level.lower()!r}")
    return _check_hosts(AgentConfig(
        app=app_name,
        root=_path(base, _get(raw, "root", str, required=True)),
        trusted_root=_path(base, _get(raw, "trusted_root", str, required=True)),
        repo_url=_with_slash(repo_url, "repo_url"),
        server_url=_with_slash(server_url, "server_url"),
        enrollment_token=_opt(raw, "enrollment_token", str),
        channel=channel, platform=platform,
        device_id=_opt(raw, "device_id", str),
        keep=keep,
        keep_days=_keep_days(raw),
        poll_interval=_positive(raw, "poll_interval", 3600.0),
        poll_jitter=_get(raw, "poll_jitter", float, 0.1),
        tags=_str_map(raw.get("tags", {}), "tags"),
        policy=_policy(_section(raw, "policy")),
        download=_download(_section(raw, "download")),
        process=_process(_section(raw, "process")),
        health=_health(_section(raw, "health")),
        modules=_modules(_section(raw, "modules")),
        status_api=_status_api(_section(raw, "status_api")),
        push=_push(_section(raw, "push"), fleet_mode=server_url is not None),
        fleet=_fleet(_section(raw, "fleet")),
        self_update=_self_update(raw, base),
        log_json=_get(log, "json", bool, False, prefix="log."),
        log_level=log_level,
        source=source,
    ))


def _keep_days(raw: Mapping[str, Any]) -> float | None:
    """``keep_days``: absent means no age limit; a limit must be positive."""
    return _positive(raw, "keep_days", 1.0) if "keep_days" in raw else None


def _policy(raw: Mapping[str, Any]) -> PolicyConfig:
    _no_unknown(raw, {"auto", "window", "window_exempt", "server_override", "apply"},
                "policy.")
    apply = _get(raw, "apply", str, "now", prefix="policy.")
    if apply not in APPLY_POLICIES:
        raise ConfigError(f"policy.apply must be now, next-start or manual, got {apply!r}")
    window_text = _opt(raw, "window", str, "policy.")
    try:
        window = MaintenanceWindow.parse(window_text) if window_text else None
    except ValueError as e:
        raise ConfigError(f"policy.window: {e}") from None
    return PolicyConfig(auto=_types(raw, "auto", DEFAULT_AUTO),
                        window=window,
                        window_exempt=_types(raw, "window_exempt", DEFAULT_WINDOW_EXEMPT),
                        server_override=_get(raw, "server_override", bool, False,
                                             prefix="policy."),
                        apply=apply)


def _types(raw: Mapping[str, Any], key: str, default: frozenset[UpdateType]
           ) -> frozenset[UpdateType]:
    if key not in raw:
        return default
    values = raw[key]
    if not isinstance(values, list):
        raise ConfigError(f"policy.{key} must be a list of update types")
    try:
        return frozenset(UpdateType(v) for v in values)
    except ValueError as e:
        raise ConfigError(f"policy.{key}: {e} (patch, minor, major, security, hotfix)") from None


def _download(raw: Mapping[str, Any]) -> DownloadConfig:
    _no_unknown(raw, {"timeout", "deadline", "retries", "backoff", "max_backoff",
                      "bandwidth", "deltas", "stall_timeout", "stall_bytes",
                      "require_https", "allowed_hosts"}, "download.")
    return DownloadConfig(
        timeout=_positive(raw, "timeout", 30.0, "download."),
        deadline=_positive(raw, "deadline", 3600.0, "download."),
        retries=_get(raw, "retries", int, 5, prefix="download."),
        backoff=_positive(raw, "backoff", 1.0, "download."),
        max_backoff=_positive(raw, "max_backoff", 60.0, "download."),
        bandwidth=_get(raw, "bandwidth", int, 0, prefix="download."),
        deltas=_get(raw, "deltas", bool, True, prefix="download."),
        stall_timeout=_positive(raw, "stall_timeout", 60.0, "download."),
        stall_bytes=_get(raw, "stall_bytes", int, 1024, prefix="download."),
        require_https=_get(raw, "require_https", bool, False, prefix="download."),
        allowed_hosts=_host_names(raw.get("allowed_hosts", [])))


def _host_names(value: object) -> frozenset[str]:
    """``[download] allowed_hosts``: host names, or ``*.domain``; no schemes or ports."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("download.allowed_hosts must be a list of host names")
    names = frozenset(v.strip().rstrip(".").lower() for v in value)
    for name in sorted(names):
        bare = name.removeprefix("*.")
        if not bare or any(c in bare for c in "/:@*? "):
            raise ConfigError(f"download.allowed_hosts: {name!r} is not a host name "
                              "(e.g. \"updates.example.com\" or \"*.example.com\")")
    return names


def _check_hosts(config: AgentConfig) -> AgentConfig:
    """The config's own URLs must pass its ``[download]`` policy: refused at start, not
    at the first check hours later."""
    policy = config.download.hosts
    for key, url in (("repo_url", config.repo_url), ("server_url", config.server_url),
                     ("push.url", config.push.url)):
        why = None if url is None else policy.refusal(url)
        if why is not None:
            raise ConfigError(f"{key}: {why}")
    return config


def _process(raw: Mapping[str, Any]) -> ProcessConfig:
    _no_unknown(raw, {"command", "restart_command", "env", "stop_timeout"}, "process.")
    return ProcessConfig(command=_argv(raw, "command", "process."),
                         restart_command=_argv(raw, "restart_command", "process."),
                         env=_str_map(raw.get("env", {}), "process.env"),
                         stop_timeout=_positive(raw, "stop_timeout", 10.0, "process."))


def _health(raw: Mapping[str, Any]) -> HealthConfig:
    _no_unknown(raw, {"command", "url", "timeout", "startup_grace", "crash_loop_restarts",
                      "crash_loop_window", "pre_command", "interval"}, "health.")
    timeout = raw.get("timeout")
    return HealthConfig(
        command=_argv(raw, "command", "health."), url=_opt(raw, "url", str, "health."),
        timeout=None if timeout is None else _positive(raw, "timeout", 30.0, "health."),
        startup_grace=_get(raw, "startup_grace", float, 2.0, prefix="health."),
        crash_loop_restarts=_get(raw, "crash_loop_restarts", int, 3, prefix="health."),
        crash_loop_window=_positive(raw, "crash_loop_window", 60.0, "health."),
        pre_command=_argv(raw, "pre_command", "health."),
        interval=_interval(raw))


def _interval(raw: Mapping[str, Any]) -> float:
    value = _get(raw, "interval", float, 0.0, prefix="health.")
    if value < 0:
        raise ConfigError(f"health.interval must be 0 (off) or positive, not {value}")
    return value


def _modules(raw: Mapping[str, Any]) -> ModulesConfig:
    _no_unknown(raw, {"enabled", "tick_interval", "hook_timeout"}, "modules.")
    return ModulesConfig(enabled=_get(raw, "enabled", bool, True, prefix="modules."),
                         tick_interval=_positive(raw, "tick_interval", 10.0, "modules."),
                         hook_timeout=_positive(raw, "hook_timeout", 30.0, "modules."))


def _status_api(raw: Mapping[str, Any]) -> StatusApiConfig:
    _no_unknown(raw, {"enabled", "port"}, "status_api.")
    port = _get(raw, "port", int, 8765, prefix="status_api.")
    if not 0 <= port < 65536:
        raise ConfigError("status_api.port must be a TCP port")
    return StatusApiConfig(enabled=_get(raw, "enabled", bool, False, prefix="status_api."),
                           port=port)


def _fleet(raw: Mapping[str, Any]) -> FleetConfig:
    _no_unknown(raw, {"deadline", "max_reply"}, "fleet.")
    max_reply = _get(raw, "max_reply", int, 1 << 20, prefix="fleet.")
    if max_reply < 1024:
        raise ConfigError("fleet.max_reply must be at least 1024 bytes")
    return FleetConfig(deadline=_positive(raw, "deadline", 60.0, "fleet."),
                       max_reply=max_reply)


def _self_update(top: Mapping[str, Any], base: Path) -> SelfUpdateConfig | None:
    if "self_update" not in top:
        return None
    raw = _section(top, "self_update")
    _no_unknown(raw, {"root", "channel", "timeout", "platform"}, "self_update.")
    from fleetup._agent_tree import agent_platform

    try:
        channel = _opt(raw, "channel", str, "self_update.")
        platform = _get(raw, "platform", str, agent_platform(), prefix="self_update.")
        check_name("platform", platform)
        if channel is not None:
            check_name("channel", channel)
    except UsageError as e:
        raise ConfigError(f"self_update: {e}") from None
    return SelfUpdateConfig(
        root=_path(base, _get(raw, "root", str, required=True, prefix="self_update.")),
        channel=channel, timeout=_positive(raw, "timeout", 60.0, "self_update."),
        platform=platform)


def _push(raw: Mapping[str, Any], *, fleet_mode: bool) -> PushConfig:
    _no_unknown(raw, {"url", "jitter"}, "push.")
    url = _opt(raw, "url", str, prefix="push.")
    if url is not None and not fleet_mode:
        raise ConfigError("push.url needs fleet mode: the fleet server is what pushes")
    if url is not None and not url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(f"push.url must be a NATS URL (nats://HOST:PORT), got {url!r}")
    jitter = _get(raw, "jitter", float, 10.0, prefix="push.")
    if jitter < 0:
        raise ConfigError("push.jitter cannot be negative")
    return PushConfig(url=url, jitter=jitter)


# -- small typed readers ----------------------------------------------------------------


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _get(raw: Mapping[str, Any], key: str, kind: type[T], default: T | None = None,
         required: bool = False, prefix: str = "") -> T:
    if key not in raw:
        if required or default is None:
            raise ConfigError(f"missing required key {prefix + key!r}")
        return default
    value = raw[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{prefix}{key} must be {kind.__name__}, got {value!r}")
    return value


def _opt(raw: Mapping[str, Any], key: str, kind: type[T], prefix: str = "") -> T | None:
    return _get(raw, key, kind, prefix=prefix) if raw.get(key) is not None else None


def _positive(raw: Mapping[str, Any], key: str, default: float, prefix: str = "") -> float:
    value = _get(raw, key, float, default, prefix=prefix)
    if value <= 0:
        raise ConfigError(f"{prefix}{key} must be positive")
    return value


def _argv(raw: Mapping[str, Any], key: str, prefix: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{prefix}{key} must be a list of strings (an argv), e.g. [\"./run.sh\"]")
    return tuple(value)


def _str_map(value: object, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{key} must be a table of strings")
    return dict(value)


def _no_unknown(raw: Mapping[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}")


def _path(base: Path, text: str) -> Path:
    return (base / text).resolve() if not Path(text).is_absolute() else Path(text)


def _with_slash(url: str | None, key: str) -> str | None:
    if url is None:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{key} is not an http(s) URL: {url!r}")
    return url if url.endswith("/") else url + "/"
