"""Device groups as operators write them: ``TAG=VALUE`` filters, all of which must match.

One parser for the CLI (``--group``), the dashboard's start form and anything else that
reads them; the API takes the parsed mapping.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetup.errors import UsageError

__all__ = ["parse_group"]


def parse_group(items: Iterable[str], *, label: str = "group") -> dict[str, str]:
    """``{tag: value}`` of ``TAG=VALUE`` items (a later item of a tag wins).

    Raises:
        UsageError: an item has no ``=`` or an empty tag (``<label> 'item': use TAG=VALUE``).
    """
    group: dict[str, str] = {}
    for item in items:
        tag, sep, value = item.partition("=")
        if not sep or not tag:
            raise UsageError(f"{label} {item!r}: use TAG=VALUE")
        group[tag] = value
    return group
