"""Tokens and roles."""

from __future__ import annotations

import pytest

from fleetup.server._auth import Role, TokenKind, hash_token, new_token, role_allows, same_hash


def test_tokens_are_random_prefixed_and_stored_as_sha256() -> None:
    a, b = new_token(TokenKind.DEVICE), new_token(TokenKind.DEVICE)
    assert a != b
    assert a.startswith("fud_")
    assert len(a) > 40
    assert len(hash_token(a)) == 64
    assert hash_token(a) != a
    assert same_hash(hash_token(a), hash_token(a))
    assert not same_hash(hash_token(a), hash_token(b))


@pytest.mark.parametrize(("held", "needed", "allowed"), [
    (Role.ADMIN, Role.VIEWER, True), (Role.ADMIN, Role.ADMIN, True),
    (Role.PUBLISHER, Role.VIEWER, True), (Role.PUBLISHER, Role.ADMIN, False),
    (Role.VIEWER, Role.PUBLISHER, False), (Role.VIEWER, Role.VIEWER, True)])
def test_roles_include_the_weaker_ones(held: Role, needed: Role, allowed: bool) -> None:
    assert role_allows(held, needed) is allowed
