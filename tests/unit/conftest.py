"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.fsync`` made a no-op for one test.

    fsync costs ~5 ms a call on a VM disk and a publish or an update makes dozens; what
    it buys, durability across a power cut, is not observable in-process (tests/crash/
    kills real processes for that, and the integration tests keep real fsync). The calls
    still happen, so tests that make them fail (disk-full sweeps) still see them.
    """
    monkeypatch.setattr(os, "fsync", lambda fd: None)
