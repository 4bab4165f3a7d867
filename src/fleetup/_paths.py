"""Pure checks on paths inside a release tree: what may be published or unpacked.

A release tree is a set of entries named by relative POSIX paths. These rules are
shared by the publisher (refusing to publish a tree that escapes itself) and the agent
(refusing to unpack an archive that would). No IO here: symlinks are resolved against
the tree's own link table, never against the real file system.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

__all__ = ["MAX_DEPTH", "MAX_NAME", "MAX_PATH", "PathRejectedError", "check_member_path",
           "link_escapes", "parent_through_link", "path_depth"]

_MAX_LINK_HOPS = 40  # like the kernel's MAXSYMLINKS
# Absolute bounds on any tree fleetup publishes or unpacks, whatever is signed: the
# kernel's NAME_MAX and PATH_MAX, and a depth far past real trees but far below what
# breaks recursive tools (Python's recursion limit is ~1000).
MAX_NAME = 255
MAX_PATH = 4095
MAX_DEPTH = 128


class PathRejectedError(ValueError):
    """A path or link target is not allowed; the message says why."""


def check_member_path(name: str) -> str:
    """Return ``name`` normalized, or raise :class:`PathRejectedError`.

    Refused: empty names, absolute paths, ``..`` components, NUL bytes, backslashes
    (which some tools treat as separators), names that normalize to the root, and
    names longer or deeper than :data:`MAX_NAME`, :data:`MAX_PATH`, :data:`MAX_DEPTH`.
    """
    if not name or "\x00" in name:
        raise PathRejectedError("empty name or NUL byte")
    if "\\" in name:
        raise PathRejectedError("backslash in path")
    if name.startswith("/"):
        raise PathRejectedError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRejectedError("'..' in path")
    if not parts:
        raise PathRejectedError("path names the tree root")
    path = "/".join(parts)
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise PathRejectedError(f"path longer than {MAX_PATH} bytes")
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME for p in parts):
        raise PathRejectedError(f"a name longer than {MAX_NAME} bytes")
    if len(parts) > MAX_DEPTH:
        raise PathRejectedError(f"deeper than {MAX_DEPTH} levels")
    return path


def path_depth(path: str) -> int:
    """How many levels deep a normalized member path is (``a`` is 1, ``a/b`` is 2)."""
    return path.count("/") + 1


def link_escapes(path: str, target: str, links: Mapping[str, str]) -> bool:
    """Whether the symlink at ``path`` pointing to ``target`` leads outside the tree.

    ``links`` maps every symlink of the tree (normalized path → target), so chains of
    links inside the tree are followed as the kernel would follow them. An absolute
    target always escapes. A loop counts as escaping: it cannot be trusted to resolve.
    """
    if target.startswith("/") or "\x00" in target or not target:
        return True
    components = _split(posixpath.dirname(path)) + _split(target)
    resolved: list[str] = []
    hops = 0
    while components:
        part = components.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        resolved.append(part)
        joined = "/".join(resolved)
        if joined in links:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return True
            next_target = links[joined]
            if next_target.startswith("/"):
                return True
            resolved.pop()
            components = _split(next_target) + components
    return False


def parent_through_link(path: str, links: Mapping[str, str]) -> str | None:
    """The first proper parent of ``path`` that is a symlink, or ``None``.

    Writing below a symlink would write wherever it points, so unpacking refuses it.
    """
    parts = path.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in links:
            return prefix
    return None


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("",)]
