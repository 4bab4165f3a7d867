"""PEP 440 parsing and the update type a version change implies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from fleetup._versions import UpdateType, derive_update_type, parse_version
from fleetup.errors import FleetupError, VersionError


@pytest.mark.parametrize(("text", "normalized"), [
    ("1.0.0", "1.0.0"),
    ("1.0", "1.0"),
    ("v2.3", "2.3"),
    ("1.0.0-rc1", "1.0.0rc1"),
    ("1.0.0.post2", "1.0.0.post2"),
    ("2024.11.3", "2024.11.3"),
    ("1!2.0", "1!2.0"),
    (" 1.2.3 ", "1.2.3"),
])
def test_parse_version_accepts_and_normalizes_pep440(text: str, normalized: str) -> None:
    assert str(parse_version(text)) == normalized


@pytest.mark.parametrize("text", ["", "latest", "1.0.0.x", "1..0", "one", "1.0-", "1.0 beta"])
def test_parse_version_refuses_non_versions_naming_the_text(text: str) -> None:
    with pytest.raises(VersionError) as info:
        parse_version(text)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, FleetupError)
    assert not info.value.retryable


@pytest.mark.parametrize(("lower", "higher"), [
    ("1.9.0", "1.10.0"),      # a string comparison gets this one wrong
    ("1.2.9", "1.2.10"),
    ("9.0", "10.0"),
    ("1.0.0rc1", "1.0.0"),
    ("1.0.0", "1.0.0.post1"),
    ("1.0.0.dev1", "1.0.0a1"),
    ("2.0", "1!1.0"),         # an epoch outranks everything
])
def test_versions_order_by_pep440_not_by_string(lower: str, higher: str) -> None:
    assert parse_version(lower) < parse_version(higher)


def test_equal_versions_with_different_spellings() -> None:
    assert parse_version("1.0") == parse_version("1.0.0") == parse_version("v1.0.0")


@pytest.mark.parametrize(("previous", "new", "expected"), [
    (None, "1.0.0", UpdateType.MAJOR),
    ("1.0.0", "2.0.0", UpdateType.MAJOR),
    ("1.9.0", "1.10.0", UpdateType.MINOR),
    ("1.0.0", "1.1.0", UpdateType.MINOR),
    ("1.0.0", "1.0.1", UpdateType.PATCH),
    ("1.0.0", "1.0.0.post1", UpdateType.PATCH),
    ("1.0", "1.0.5", UpdateType.PATCH),
    ("1.0.0rc1", "1.0.0", UpdateType.PATCH),
    ("2.5.0", "1.0.0", UpdateType.MAJOR),   # any move of the major part
])
def test_derive_update_type(previous: str | None, new: str, expected: UpdateType) -> None:
    old = parse_version(previous) if previous else None
    assert derive_update_type(old, parse_version(new)) is expected


def test_update_type_values_are_the_persisted_strings() -> None:
    assert [t.value for t in UpdateType] == ["patch", "minor", "major", "security", "hotfix"]


releases = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))


@given(releases, releases)
def test_update_type_is_decided_by_the_first_release_part_that_moved(
        a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    previous, new = Version(".".join(map(str, a))), Version(".".join(map(str, b)))
    kind = derive_update_type(previous, new)
    if a[0] != b[0]:
        assert kind is UpdateType.MAJOR
    elif a[1] != b[1]:
        assert kind is UpdateType.MINOR
    else:
        assert kind is UpdateType.PATCH


@given(releases)
def test_parse_version_round_trips_its_own_output(parts: tuple[int, int, int]) -> None:
    version = parse_version(".".join(map(str, parts)))
    assert parse_version(str(version)) == version
    assert version.release == parts
