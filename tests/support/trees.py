"""Sample release source trees for tests, and a fingerprint to prove a directory unchanged.

The whole API::

    make_tree(root, {"bin/run": File(b"...", 0o755), "doc": Dir(), "ln": Link("bin/run"),
                     "README": "plain str/bytes values are 0644 files"})   # spec: TreeSpec
    sample_app(root, "1.2.0")             # a small app tree; versions differ only a little
    wheel_like(version, build)            # spec of an unpacked wheel: dist-info + a .so
    fingerprint(root)                     # {relative path: (kind, mode, sha256)} of a tree

Everything here is deterministic: the same arguments give byte-identical trees, so
archives built from them are byte-identical too.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Dir", "File", "Fingerprint", "Link", "TreeSpec", "fingerprint", "make_tree",
           "relinked_library", "sample_app", "wheel_like"]


@dataclass(frozen=True)
class File:
    """A regular file; ``str`` content is encoded as UTF-8."""

    data: bytes | str = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    """A directory (parents of other entries are made implicitly, mode 0755)."""

    mode: int = 0o755


@dataclass(frozen=True)
class Link:
    """A symlink whose target is stored verbatim (it need not exist)."""

    target: str


TreeSpec = Mapping[str, "File | Dir | Link | bytes | str"]


def make_tree(root: Path, spec: TreeSpec) -> Path:
    """Create ``root`` and the entries of ``spec`` (relative POSIX paths) in it.

    Plain ``bytes``/``str`` values are files of mode 0644. Modes are set exactly,
    whatever the umask; directory modes are applied last, so a read-only directory
    can still be filled. Returns ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    dir_modes: dict[Path, int] = {}
    for name, value in sorted(spec.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = File(value) if isinstance(value, bytes | str) else value
        if isinstance(entry, Dir):
            path.mkdir(exist_ok=True)
            dir_modes[path] = entry.mode
        elif isinstance(entry, Link):
            os.symlink(entry.target, path)
        else:
            data = entry.data.encode() if isinstance(entry.data, str) else entry.data
            path.write_bytes(data)
            path.chmod(entry.mode)
    for path in sorted(dir_modes, key=lambda p: len(p.parts), reverse=True):
        path.chmod(dir_modes[path])
    return root


def sample_app(root: Path, version: str, *, payload_size: int = 64 << 10, seed: int = 0,
               healthy: bool = True) -> Path:
    """A small release tree of an app called ``hello`` at ``version``.

    ``bin/hello`` (0755) prints the version; ``bin/health`` (0755) exits 0, or 1 when
    not ``healthy``; ``VERSION``; ``share/doc/README`` (0644); ``etc/secret.conf``
    (0600); ``lib/payload.bin``: ``payload_size`` pseudo-random bytes from ``seed`` in
    which only 64 bytes depend on the version, so a delta between two versions is far
    smaller than either archive; ``bin/current`` -> ``hello`` and ``doc`` ->
    ``share/doc`` are in-tree symlinks; ``var/empty`` is an empty directory.
    """
    payload = bytearray(random.Random(seed).randbytes(payload_size))
    if payload_size >= 64:
        mark = hashlib.sha256(version.encode()).digest() * 2
        offset = int.from_bytes(mark[:4], "big") % (payload_size - 63)
        payload[offset:offset + 64] = mark
    return make_tree(root, {
        "VERSION": f"{version}\n",
        "bin/hello": File(f"#!/bin/sh\necho 'hello {version}'\n", 0o755),
        "bin/health": File(f"#!/bin/sh\nexit {0 if healthy else 1}\n", 0o755),
        "bin/current": Link("hello"),
        "doc": Link("share/doc"),
        "etc/secret.conf": File("token = not-a-secret\n", 0o600),
        "lib/payload.bin": bytes(payload),
        "share/doc/README": f"hello {version}: a sample app for fleetup's tests.\n",
        "var/empty": Dir(),
    })


def relinked_library(size: int, build: int) -> bytes:
    """``size`` bytes of "machine code" as build ``build`` links it: the same code (one
    pseudo-random body), with a 32-bit address every 6 bytes moved by ``build`` pages.

    Like a rebuilt ``.so``: no run of 6 equal bytes survives between two builds, so zstd
    with the old build as dictionary barely helps, yet a differ (bsdiff4, HDiffPatch)
    sees the same code with a constant shift and makes a patch of a few kB.
    """
    body = bytearray(random.Random(1).randbytes(size))
    for offset in range(0, size - 4, 6):
        (address,) = struct.unpack_from("<I", body, offset)
        struct.pack_into("<I", body, offset, (address + build * 0x1000) & 0xFFFFFFFF)
    return bytes(body)


def wheel_like(version: str, build: int, *, library_size: int = 256 << 10) -> TreeSpec:
    """An unpacked binary wheel of ``pkg`` at ``version``: its ``pkg-<version>.dist-info``
    (renamed every release) and a native library rebuilt for every ``build``."""
    info = f"pkg-{version}.dist-info"
    return {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: pkg\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n",
        f"{info}/RECORD": f"pkg/__init__.py,,\npkg/_native.so,,\n{info}/RECORD,,\n",
        "pkg/__init__.py": f"__version__ = {version!r}\nfrom pkg._native import *\n",
        "pkg/_native.so": File(relinked_library(library_size, build), 0o755),
    }


Fingerprint = dict[str, tuple[str, int, str]]


def fingerprint(root: Path) -> Fingerprint:
    """Every path under ``root``: ``(kind, permission bits, sha256 of content or target)``.

    Two equal fingerprints mean the same paths, types, modes and bytes; compare one
    taken before an operation with one taken after it to prove nothing changed.
    Symlinks are recorded, never followed.
    """
    result: Fingerprint = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                digest = hashlib.sha256(os.readlink(path).encode()).hexdigest()
                result[rel] = ("link", 0o777, digest)
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            elif not stat.S_ISREG(st.st_mode):
                result[rel] = ("other", stat.S_IMODE(st.st_mode), "")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                result[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
    return result
