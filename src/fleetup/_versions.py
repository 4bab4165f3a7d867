"""Versions and update types: PEP 440 ordering, never string comparison.

Pure functions over values; no IO.
"""

from __future__ import annotations

import enum

from packaging.version import InvalidVersion, Version

from fleetup.errors import VersionError

__all__ = ["UpdateType", "derive_update_type", "parse_version"]


class UpdateType(enum.StrEnum):
    """How a release changes what is installed; policies decide per type."""

    PATCH = "patch"
    MINOR = "minor"
    MAJOR = "major"
    SECURITY = "security"
    HOTFIX = "hotfix"


def parse_version(text: str) -> Version:
    """Parse ``text`` as a PEP 440 version.

    Raises:
        VersionError: ``text`` is not a version.
    """
    try:
        return Version(text)
    except InvalidVersion as e:
        raise VersionError(f"not a version (PEP 440): {text!r}") from e


def derive_update_type(previous: Version | None, new: Version) -> UpdateType:
    """The update type a version change implies: which release part moved first.

    A first release (no ``previous``) counts as major.
    """
    if previous is None:
        return UpdateType.MAJOR
    if new.major != previous.major:
        return UpdateType.MAJOR
    if new.minor != previous.minor:
        return UpdateType.MINOR
    return UpdateType.PATCH
