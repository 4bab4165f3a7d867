"""fleetup: secure, crash-safe software updates for fleets of unattended machines.

Packages: ``fleetup.repository`` (publisher), ``fleetup.agent`` (device),
``fleetup.server`` (fleet server, extra ``fleetup[server]``), ``fleetup.errors``.
"""

from fleetup._version import __version__

__all__ = ["__version__"]
