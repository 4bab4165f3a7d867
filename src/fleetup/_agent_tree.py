"""The shape of fleetup itself as a release: one relocatable tree per Python ABI and OS.

::

    bin/fleetup     the launcher (sh): runs this tree's lib/ with any CPython of the ABI
    lib/            fleetup and its dependencies, as ``pip install --target`` lays them out

Both the publisher (``release add-agent``) and the device (``agent install-self``) build
this shape, so a tree copied from a running agent and one built from wheels are
interchangeable. The launcher resolves its own location (``current`` → ``releases/<v>``)
once, so a process keeps running the version it started from after ``current`` moves.
Compiled wheels tie a tree to an ABI, hence platforms like ``cp311-linux-x86_64``.
"""

from __future__ import annotations

import compileall
import py_compile
import re
import sys
from pathlib import Path

from fleetup._facts import default_platform
from fleetup.errors import UsageError

__all__ = ["AGENT_APP", "LAUNCHER", "agent_platform", "finish_tree", "pip_platform_args",
           "write_launcher"]

AGENT_APP = "fleetup-agent"

# ``-S``: nothing from the interpreter's site-packages mixes into the tree; the tree is
# all there is. ``FLEETUP_PYTHON`` picks the interpreter (default: python3 on PATH).
LAUNCHER = """#!/bin/sh
# fleetup's launcher (written by fleetup): runs this tree's own lib/.
here=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd -P) || exit 1
FLEETUP_OUTER_PYTHONPATH="${PYTHONPATH-}" PYTHONPATH="$here/lib" \\
  PYTHONDONTWRITEBYTECODE=1 FLEETUP_TREE="$here" \\
  exec "${FLEETUP_PYTHON:-python3}" -S -m fleetup "$@"
"""

_PLATFORM = re.compile(r"cp(?P<major>3)(?P<minor>\d{1,2})-linux-(?P<arch>x86_64|aarch64)")


def agent_platform() -> str:
    """This interpreter's agent platform, e.g. ``cp311-linux-x86_64``."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}-{default_platform()}"


def pip_platform_args(platform: str) -> list[str]:
    """pip's options to install wheels for ``platform`` (none for this machine's own).

    Raises:
        UsageError: not a platform fleetup can build an agent tree for.
    """
    if platform == agent_platform():
        return []
    match = _PLATFORM.fullmatch(platform)
    if match is None:
        raise UsageError(f"cannot build an agent tree for {platform!r} "
                         f"(expected e.g. cp311-linux-x86_64 or cp312-linux-aarch64)")
    arch, minor = match["arch"], match["minor"]
    tags = [f"manylinux_2_{n}_{arch}" for n in (17, 28, 34)] + [f"manylinux2014_{arch}"]
    return [*(a for tag in tags for a in ("--platform", tag)), "--implementation", "cp",
            "--python-version", f"3.{minor}", "--abi", f"cp3{minor}", "--only-binary=:all:"]


def write_launcher(tree: Path) -> Path:
    """Write ``bin/fleetup`` (0755) into ``tree``; returns its path."""
    path = tree / "bin" / "fleetup"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LAUNCHER)
    path.chmod(0o755)
    return path


def finish_tree(tree: Path, platform: str) -> None:
    """The launcher, no stray console scripts (their shebangs name a build machine's
    interpreter), and byte code that does not depend on file times (an unpacked tree
    gets new mtimes; ``unchecked-hash`` byte code stays valid and the tree immutable)."""
    lib = tree / "lib"
    scripts = lib / "bin"
    if scripts.is_dir():
        for entry in scripts.iterdir():
            entry.unlink()
        scripts.rmdir()
    if platform == agent_platform():
        compileall.compile_dir(str(lib), quiet=2, workers=1,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    write_launcher(tree)
