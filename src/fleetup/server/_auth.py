"""Bearer tokens: made from 256 random bits, stored only as SHA-256, compared in constant time.

A token is high-entropy, so one unsalted SHA-256 is enough to make a stolen database
useless for logging in (no password-style stretching is needed), and it lets the server
find a token by its hash with one indexed lookup. The prefix says what kind of token it
is, so a device token pasted where an operator token belongs fails with a clear message.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

__all__ = ["Role", "TokenKind", "hash_token", "new_token", "reset_hash", "role_allows",
           "same_hash"]


class TokenKind(enum.StrEnum):
    OPERATOR = "fuo_"
    ENROLLMENT = "fue_"
    DEVICE = "fud_"


class Role(enum.StrEnum):
    """Operator roles; each includes the rights of those before it."""

    VIEWER = "viewer"
    PUBLISHER = "publisher"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.PUBLISHER: 1, Role.ADMIN: 2}


def role_allows(held: Role, needed: Role) -> bool:
    """Whether a token with role ``held`` may call an endpoint that needs ``needed``."""
    return _RANK[held] >= _RANK[needed]


def new_token(kind: TokenKind) -> str:
    """A fresh token of ``kind``: its prefix and 256 random bits, URL-safe."""
    return kind.value + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 the database keeps instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(a.encode(), b.encode())


def reset_hash(device_id: str) -> str:
    """The token hash of a device an operator reset: the SHA-256 of a string that is no
    token (tokens start with their kind's prefix), so no token opens the device, it is
    unique per device, and enrollment knows the id may be claimed again."""
    return hash_token(f"reset:{device_id}")
