"""``fleetup server``: run the fleet server (upgrading its database first)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from fleetup._push import import_nats
from fleetup.cli._output import say
from fleetup.errors import UsageError


@click.command("server")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="Database URL: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB. "
                   "[default: DATA/fleetup.db]")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("fleetup-data"), show_default=True,
              help="Directory of the release store, its online keys and the SQLite file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each with its own caches; the database is shared).")
@click.option("--nats", "nats_url", default=None, metavar="URL",
              help="NATS server to push 'check now' to devices when a rollout changes "
                   "(e.g. nats://127.0.0.1:4222; needs fleetup[push]). [default: poll only]")
@click.option("--checkin-interval", type=click.IntRange(1, 86_400), default=None,
              metavar="SECONDS",
              help="How often devices in fleet mode check in (the server's answer wins "
                   "over the agent's poll_interval; spread by the jitter). "
                   "[default: $FLEETUP_SERVER_CHECKIN_INTERVAL or 300]")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def server(db_url: str | None, data_dir: Path, host: str, port: int, workers: int,
           nats_url: str | None, checkin_interval: int | None, log_level: str) -> None:
    """Run the fleet server: REST API under /api/v1, signed repository under /repo/."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from fleetup.server import Settings, prepare_database

    os.environ["FLEETUP_SERVER_DATA_DIR"] = str(data_dir.resolve())
    if db_url:
        os.environ["FLEETUP_SERVER_DB_URL"] = db_url
    if nats_url:
        os.environ["FLEETUP_SERVER_NATS_URL"] = nats_url
    if checkin_interval is not None:  # the flag wins; the variable stays the fallback
        os.environ["FLEETUP_SERVER_CHECKIN_INTERVAL"] = str(checkin_interval)
    settings = Settings()  # also reads any other FLEETUP_SERVER_* the caller set
    if settings.nats_url:
        import_nats()
    prepare_database(settings)
    config = uvicorn.Config("fleetup.server._app:create_app", factory=True, host=host,
                            port=port, workers=workers, log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=10)
    sock = _listen(host, port)
    backend = settings.database_url.partition(":")[0]
    say(f"fleet server on http://{host}:{sock.getsockname()[1]} (data {settings.data_dir}, "
        f"{backend}, {workers} worker{'s' if workers > 1 else ''})")
    if workers > 1:
        with _shared_metrics():
            Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """Let every worker's counters reach every ``/metrics`` scrape.

    prometheus-client's multiprocess mode keeps each process's values in files under
    ``PROMETHEUS_MULTIPROC_DIR``, which must be empty when the server starts. Unless the
    operator chose a directory, a fresh temporary one is made for this run, inherited by
    the workers (spawned after this), and removed when the server stops.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="fleetup-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, made here rather than by uvicorn.

    It is created with ``IPPROTO_TCP`` explicitly: asyncio sets ``TCP_NODELAY`` only on
    connections whose socket says so, and uvicorn's own multi-worker socket (protocol
    0) leaves Nagle's algorithm on, which with delayed ACKs stalls every keep-alive
    request ~40 ms (measured: 22 requests/s on one connection instead of ~3,000).

    Raises:
        UsageError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.set_inheritable(True)
    return sock
