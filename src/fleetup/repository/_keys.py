"""Signing keys of a release repository: ed25519, PEM/PKCS#8 files, mode 0600.

Keys are made and used through securesystemslib's ``CryptoSigner``; an optional
passphrase encrypts the PEM with the best encryption ``cryptography`` offers.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, SSlibKey

from fleetup._atomic import atomic_write
from fleetup.errors import SigningKeyError, UsageError

__all__ = ["generate_key", "key_path", "load_signer", "passphrase_from_env", "save_key"]

ROLES = ("root", "targets", "snapshot", "timestamp")


def key_path(keys_dir: Path, role: str) -> Path:
    return keys_dir / f"{role}.key"


def passphrase_from_env(var: str | None) -> bytes | None:
    """The passphrase held in environment variable ``var`` (``None`` if no ``var``).

    Raises:
        UsageError: ``var`` is named but unset or empty.
    """
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise UsageError(f"environment variable {var} holds no passphrase")
    return value.encode()


def generate_key() -> CryptoSigner:
    """A new ed25519 signer."""
    return CryptoSigner.generate_ed25519()


def save_key(path: Path, signer: CryptoSigner, passphrase: bytes | None) -> None:
    """Write the signer's private key to ``path`` (0600), encrypted if a passphrase is given."""
    # CryptoSigner exposes the key only as unencrypted PEM; re-serialize to encrypt.
    private = load_pem_private_key(signer.private_bytes, None)
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    atomic_write(path, pem, mode=0o600)


def load_signer(path: Path, passphrase: bytes | None, allowed_keyids: set[str],
                role: str) -> CryptoSigner:
    """Load the key at ``path`` and check that ``role`` trusts it.

    Raises:
        SigningKeyError: missing, unreadable, encrypted without passphrase, wrong
            passphrase, or not one of the role's keys in the current root.
    """
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"the {role} key is missing: {path}") from None
    except OSError as e:
        raise SigningKeyError(f"cannot read the {role} key {path}: {e.strerror}") from e
    try:
        private = load_pem_private_key(pem, passphrase)
    except TypeError as e:
        hint = ("it is encrypted: pass --passphrase-env VAR" if passphrase is None
                else "it is not encrypted: drop --passphrase-env")
        raise SigningKeyError(f"cannot load the {role} key {path}: {hint}") from e
    except ValueError as e:
        raise SigningKeyError(
            f"cannot load the {role} key {path}: wrong passphrase or not a PEM key") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"the {role} key {path} is not an ed25519 key")
    public = SSlibKey.from_crypto(private.public_key())
    if public.keyid not in allowed_keyids:
        raise SigningKeyError(
            f"the key in {path} is not a {role} key of this repository's root")
    return CryptoSigner(private, public)
