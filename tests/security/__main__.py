"""``python -m tests.security``: the attack table, one line a row, and its count."""

from __future__ import annotations

import importlib
import pkgutil

import tests.security as package
from tests.security._table import Attack


def all_rows() -> list[Attack]:
    found: list[Attack] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            found.extend(getattr(module, "ATTACKS", []))
    return found


def main() -> None:
    found = all_rows()
    for row in found:
        print(f"{row.attacker:<14} {row.name:<48} {row.refusal}")
    print(f"{len(found)} attacks")


if __name__ == "__main__":
    main()
