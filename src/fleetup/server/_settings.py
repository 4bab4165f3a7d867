"""Server settings: one pydantic-settings object, read from ``FLEETUP_SERVER_*`` variables.

``fleetup server`` turns its flags into these variables before it starts uvicorn, so
every worker process (``--workers N``) builds the same settings without a shared object.
Defaults give a zero set-up server: an SQLite file and local files under ``./fleetup-data``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "sqlite_url"]


def sqlite_url(data_dir: Path) -> str:
    """The default database: an SQLite file inside the data directory."""
    return f"sqlite:///{data_dir.resolve() / 'fleetup.db'}"


class Settings(BaseSettings):
    """Everything a server process needs to know; immutable once built."""

    model_config = SettingsConfigDict(env_prefix="FLEETUP_SERVER_", frozen=True)

    data_dir: Path = Path("fleetup-data")
    db_url: str = ""
    # Devices poll every checkin_interval seconds, spread by ± checkin_jitter of it.
    checkin_interval: int = Field(default=300, ge=1)
    checkin_jitter: float = Field(default=0.2, ge=0, lt=1)
    # Load shedding: check-ins in progress (per process) and buffered device updates
    # not yet written; beyond either bound a check-in is answered 503 + Retry-After.
    max_inflight_checkins: int = Field(default=512, ge=0)
    max_pending_updates: int = Field(default=200_000, ge=0)
    retry_after_seconds: int = Field(default=30, ge=1)
    # Device tokens loaded into each process's cache at start (about 300 bytes each);
    # devices beyond that are cached at their first check-in.
    token_cache_preload: int = Field(default=1_000_000, ge=0)
    # Background work: how often buffered device updates are written, caches are
    # reloaded, rollouts are evaluated, and repository expiry is checked.
    flush_seconds: float = Field(default=1.0, gt=0)
    # A check-in that changes nothing (version, state, channel, tags) updates the
    # inventory's "last seen" at most this often per device: no write per poll.
    last_seen_resolution: float = Field(default=30.0, ge=0)
    cache_seconds: float = Field(default=2.0, gt=0)
    rollout_tick_seconds: float = Field(default=5.0, gt=0)
    resign_check_seconds: float = Field(default=300.0, gt=0)
    # Re-sign snapshot/timestamp once less than this share of their lifetime is left.
    resign_remaining_share: float = Field(default=0.5, gt=0, lt=1)
    # Serve check-ins from the ASGI fast path (``_checkin``) rather than through FastAPI.
    fast_checkin: bool = True
    # Push (``_push``, extra ``fleetup[push]``): NATS server to tell devices "check now"
    # when a rollout changes (e.g. nats://127.0.0.1:4222); empty: devices only poll.
    nats_url: str = ""
    # A constant-JSON route for the check-in benchmark's baseline; off in production.
    benchmark_routes: bool = False
    # Alerts (``_alerts``): how often rules are evaluated and the webhook outbox polled;
    # each POST's timeout; retries after base * 2**(n-1) seconds (with jitter, capped),
    # giving up after max attempts (the defaults keep trying for about a day).
    alert_tick_seconds: float = Field(default=10.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_max_attempts: int = Field(default=30, ge=1)
    # E-mail notifications (``_notify``), sent through the alert outbox (so retried like
    # webhooks): an SMTP server (empty host: e-mail is not sent, rows wait and say why),
    # the sender, STARTTLS, and a login read from FLEETUP_SERVER_SMTP_USERNAME/_PASSWORD.
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "fleetup@localhost"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # Dashboard sign-ins last this long.
    session_hours: float = Field(default=12.0, gt=0)
    # Request bodies (bytes): over its route's cap a body is refused (413) before it is
    # read or its credential looked at (``_limits``). A check-in is at most 64 KiB.
    max_enroll_bytes: int = Field(default=16 << 10, ge=1024)
    max_events_bytes: int = Field(default=1 << 20, ge=1024)
    max_push_bytes: int = Field(default=2 << 30, ge=1024)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)  # every other route
    # Failed authentication (a refused operator, device or enrollment token, a wrong
    # dashboard sign-in) per client address: ``burst`` failures, refilled at the rate;
    # past them the address is answered 429 + Retry-After (``_ratelimit``). Counted per
    # process: with --workers N an address gets up to N times this.
    auth_failure_burst: int = Field(default=20, ge=1)
    auth_failures_per_minute: float = Field(default=10.0, gt=0)

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir)

    @property
    def repo_dir(self) -> Path:
        return self.data_dir / "repo"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"
