"""The attack table: one row an attack, and the refusal fleetup must give.

Every ``test_*.py`` in this folder declares its rows with :func:`attack` into a module
list ``ATTACKS`` and runs them with :func:`run_row`, so ``pytest tests/security`` is
"N attacks, all stopped" and ``python -m tests.security`` prints the table itself
(docs/security.md quotes its count). A row's check is a plain test body: it mounts the
attack for real (a hostile mirror, server or device on loopback, a local user, a web
page) and asserts the refusal. Its parameters name pytest fixtures.

Attackers, as in docs/security.md:

=================  =============================================================
``mirror``         controls what the update source serves (no keys)
``stolen-server``  runs the fleet server: holds its online keys and its database
``device``         holds one device's token (or runs a device of its own)
``enrollment``     holds the fleet-wide enrollment token
``local-user``     an unprivileged user on the device
``web-page``       a page in a browser on the device (cross-site, DNS rebinding)
``anyone``         reaches the server's port, no credential at all
``publisher-fs``   reads what the publisher serves (the public tree)
=================  =============================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

ATTACKERS = ("mirror", "stolen-server", "device", "enrollment", "local-user", "web-page",
             "anyone", "publisher-fs")


@dataclass(frozen=True)
class Attack:
    """What is tried, by whom, and what must happen instead."""

    name: str
    attacker: str
    refusal: str
    check: Callable[..., None]

    @property
    def id(self) -> str:
        return self.name


def attack(table: list[Attack], name: str, *, attacker: str,
           refusal: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare a row of ``table``: the decorated function is its check."""
    if attacker not in ATTACKERS:
        raise ValueError(f"unknown attacker {attacker!r}")

    def register(check: Callable[..., None]) -> Callable[..., None]:
        if any(row.name == name for row in table):
            raise ValueError(f"two attacks named {name!r}")
        table.append(Attack(name, attacker, refusal, check))
        return check

    return register


def run_row(row: Attack, request: pytest.FixtureRequest) -> None:
    """Run ``row``'s check with the fixtures its parameters name."""
    names = inspect.signature(row.check).parameters
    kwargs: dict[str, Any] = {name: request.getfixturevalue(name) for name in names}
    row.check(**kwargs)


def rows(table: list[Attack]) -> Any:
    """``@rows(ATTACKS)`` parametrizes a test over the table, one id per attack."""
    return pytest.mark.parametrize("row", table, ids=[row.id for row in table])
