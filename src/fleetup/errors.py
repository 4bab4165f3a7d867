"""fleetup's one exception tree.

Every error fleetup raises on purpose is a :class:`FleetupError`. Foreign exceptions
(python-tuf, httpx, OSError, zstandard, SQLAlchemy ...) are wrapped once, at the
boundary where they enter fleetup, with ``raise ... from e``. Only the CLI's ``main()``
catches everything; it prints ``str(error)`` as one line.

Each class says whether trying the same thing again can help (``retryable``): a
network blip can pass, a forged signature will not.

::

    FleetupError                        (retryable: no unless noted)
    ├── UsageError                      bad arguments or configuration
    │   └── ConfigError                 an unreadable or invalid config file
    ├── VersionError                    a string that is not a PEP 440 version
    ├── SourceTreeError                 a release source tree that cannot be published
    ├── RepositoryError                 the release repository's own state
    │   ├── SigningKeyError             a key is missing, unreadable or does not match
    │   ├── DuplicateReleaseError       that version is already published
    │   ├── ReleaseNotFoundError        no such release
    │   └── MetadataExpiredError        metadata expired (refresh or re-sign it)
    ├── TrustError                      signed metadata or an artifact failed verification
    │   ├── RollbackAttackError         older metadata or an older release than trusted
    │   └── IntegrityError              a length, hash or tree digest does not match
    ├── ArchiveError                    an archive is corrupt or unsafe to unpack
    │   └── UnsafeArchiveError          traversal, absolute path, escaping link, device, bomb
    ├── DeltaError                      a delta patch cannot be made or applied
    ├── NetworkError                    (retryable) transport failure: refused, reset, timeout
    │   ├── HTTPStatusError             an HTTP error status (retryable for 5xx, 408, 429)
    │   └── DeadlineExceededError       (retryable) a download ran past its overall deadline
    ├── StorageError                    the disk: full, read-only, permission denied
    ├── StateError                      the persisted agent state is invalid or busy
    ├── HealthCheckError                a release failed its health check
    └── ServerAPIError                  the fleet server refused a request (carries a code)
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "ConfigError",
    "DeadlineExceededError",
    "DeltaError",
    "DuplicateReleaseError",
    "FleetupError",
    "HTTPStatusError",
    "HealthCheckError",
    "IntegrityError",
    "MetadataExpiredError",
    "NetworkError",
    "ReleaseNotFoundError",
    "RepositoryError",
    "RollbackAttackError",
    "ServerAPIError",
    "SigningKeyError",
    "SourceTreeError",
    "StateError",
    "StorageError",
    "TrustError",
    "UnsafeArchiveError",
    "UsageError",
    "VersionError",
]


class FleetupError(Exception):
    """Base of every error fleetup raises on purpose.

    ``str(error)`` is one line meant for a person; ``retryable`` says whether
    repeating the same operation can succeed.
    """

    retryable: bool = False


class UsageError(FleetupError):
    """Bad arguments or configuration; fix the call, a retry will not help."""


class ConfigError(UsageError):
    """A config file is missing, unreadable or invalid."""


class VersionError(FleetupError):
    """A string is not a valid PEP 440 version."""


class SourceTreeError(FleetupError):
    """A release's source tree is missing, unreadable or unsafe to publish."""


class RepositoryError(FleetupError):
    """The release repository is missing, incomplete or inconsistent."""


class SigningKeyError(RepositoryError):
    """A signing key is missing, unreadable, encrypted without a passphrase, or wrong."""


class DuplicateReleaseError(RepositoryError):
    """The version being published already exists for that app and platform."""


class ReleaseNotFoundError(RepositoryError):
    """The named release does not exist in the repository."""


class MetadataExpiredError(RepositoryError):
    """Metadata has expired; ``fleetup repo refresh`` or re-signing is needed."""


class TrustError(FleetupError):
    """Signed metadata or a downloaded artifact failed verification; nothing was used."""


class RollbackAttackError(TrustError):
    """Metadata or a release older than what is already trusted was offered."""


class IntegrityError(TrustError):
    """A length, hash or tree digest does not match the signed value."""


class ArchiveError(FleetupError):
    """An archive is corrupt or cannot be read."""


class UnsafeArchiveError(ArchiveError):
    """An archive entry would escape the tree, is a device, or the tree is too large.

    The message names the entry.
    """


class DeltaError(FleetupError):
    """A delta patch cannot be made or applied; the full archive is the fallback."""


class NetworkError(FleetupError):
    """The transport failed: connection refused or reset, DNS, TLS, or a timeout."""

    retryable = True


class HTTPStatusError(NetworkError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = status_code >= 500 or status_code in (408, 429)


class DeadlineExceededError(NetworkError):
    """A download took longer than its overall deadline (slow retrieval)."""


class StorageError(FleetupError):
    """The local disk refused an operation: full, read-only, or permission denied."""


class StateError(FleetupError):
    """The agent's persisted state is invalid, or another agent holds the lock."""


class HealthCheckError(FleetupError):
    """A release did not pass its health check."""


class ServerAPIError(FleetupError):
    """The fleet server refused a request; ``code`` is the server's stable error code.

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one (load
    shedding): a client waits that long before it tries again. The server raises this
    class too, to answer a request with that status and code.
    """

    def __init__(self, message: str, code: str, status_code: int = 0,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code
        self.retry_after = retry_after
        self.retryable = status_code >= 500 or status_code in (408, 429)
