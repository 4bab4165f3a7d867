"""A fake monotonic clock for tests of code that takes ``clock`` and ``sleep`` seams."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic seconds that move only when the code under test sleeps or a test
    moves ``now``; every sleep is recorded in ``sleeps``."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
