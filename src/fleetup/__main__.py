"""``python -m fleetup``: the same as the ``fleetup`` command."""

from fleetup.cli import console_main

console_main()
