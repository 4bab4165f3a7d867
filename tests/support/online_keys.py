"""What a holder of a repository's online keys (snapshot, timestamp) can serve.

A stolen fleet server, or a leaked ``snapshot.key`` and ``timestamp.key``, can re-sign
the current set of metadata with any version numbers and any targets version it
names, but cannot sign targets. Tests use this to mount fast-forward and replay attacks.
"""

from __future__ import annotations

from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Timestamp

from fleetup.repository import load_signer

__all__ = ["resign_online"]


def resign_online(public: Path, keys: Path, version: int, targets_version: int) -> None:
    """What a holder of the online keys can serve: the current snapshot re-signed as
    ``version`` naming targets ``targets_version``, and a timestamp ``version`` for it."""
    root = Metadata[Root].from_file(str(public / "metadata/root.json")).signed
    signers = {role: load_signer(keys / f"{role}.key", None, set(root.roles[role].keyids),
                                 role) for role in ("snapshot", "timestamp")}
    timestamp = Metadata[Timestamp].from_file(str(public / "metadata/timestamp.json"))
    name = f"{timestamp.signed.snapshot_meta.version}.snapshot.json"
    snapshot = Metadata[Snapshot].from_file(str(public / "metadata" / name))
    snapshot.signed.version = version
    snapshot.signed.meta["targets.json"] = MetaFile(version=targets_version)
    snapshot.sign(signers["snapshot"])
    snapshot.to_file(str(public / f"metadata/{version}.snapshot.json"))
    timestamp.signed.version = version
    timestamp.signed.snapshot_meta = MetaFile(version=version)
    timestamp.sign(signers["timestamp"])
    timestamp.to_file(str(public / "metadata/timestamp.json"))
