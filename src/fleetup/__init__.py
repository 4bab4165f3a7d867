"""fleetup: secure, crash-safe software updates for fleets of unattended machines.

Packages: ``fleetup.repository`` (publisher), ``fleetup.agent`` (device),
``fleetup.server`` (fleet server, extra ``fleetup[server]``), ``fleetup.errors``.
"""

import sys as _sys
import types as _types

from fleetup._version import __version__

__all__ = ["__version__"]


def _skip_httpx_cli() -> None:
    """Keep ``import httpx`` from importing httpx's own command-line tool.

    httpx's ``__init__`` imports ``httpx._main``, and with it click, rich and pygments
    whenever they are installed: about 15 MB of resident memory and 100 ms of start-up
    on every device, for a tool fleetup never runs (encode/httpx#3547). A stub module
    registered before httpx is first imported takes its place.
    """
    if "httpx" in _sys.modules or "httpx._main" in _sys.modules:
        return
    stub = _types.ModuleType("httpx._main", "httpx's CLI, not loaded inside fleetup")

    def main(*_args: object, **_kwargs: object) -> None:
        raise SystemExit("the httpx command line is not available inside fleetup")

    stub.main = main  # type: ignore[attr-defined]
    _sys.modules["httpx._main"] = stub


_skip_httpx_cli()
