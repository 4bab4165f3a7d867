"""``fleetup demo``: the whole fleetup story on embedded defaults, as real processes."""

from fleetup.demo._story import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
