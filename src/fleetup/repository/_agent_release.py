"""``release add-agent``: fleetup itself, published as the app ``fleetup-agent``.

The tree (see :mod:`fleetup._agent_tree`) is built with pip — ``pip install --target``
of the fleetup wheel, its dependencies from ``--wheel`` files and/or the package index,
for the agent platform's ABI — and then published through :func:`add_release` like any
app, so it is signed the same way and gets deltas from earlier agent releases (most of a
new agent's tree is unchanged dependencies).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fleetup
from fleetup._agent_tree import AGENT_APP, finish_tree, pip_platform_args
from fleetup._versions import UpdateType
from fleetup.errors import SourceTreeError, UsageError
from fleetup.repository._publisher import AddedRelease, ReleaseRequest, add_release

__all__ = ["AgentReleaseRequest", "add_agent_release", "build_agent_tree", "build_wheel"]

PIP_TIMEOUT = 900.0


@dataclass(frozen=True, slots=True)
class AgentReleaseRequest:
    version: str
    platform: str
    wheels: tuple[Path, ...] = ()
    no_index: bool = False
    channels: tuple[str, ...] = ("stable",)
    notes: str = ""
    update_type: UpdateType | None = None  # None: derived (the first release is major)


def add_agent_release(repo: Path, request: AgentReleaseRequest, *,
                      passphrase: bytes | None = None) -> AddedRelease:
    """Build the agent tree for ``request`` and publish it.

    Raises:
        UsageError: no fleetup wheel of that version and no checkout to build one from.
        SourceTreeError: pip could not build or install the tree.
        (and whatever :func:`add_release` raises)
    """
    with tempfile.TemporaryDirectory(prefix="fleetup-agent-") as tmp:
        tree = build_agent_tree(Path(tmp) / "tree", request, Path(tmp) / "wheels")
        return add_release(repo, ReleaseRequest(
            src=tree, app=AGENT_APP, version=request.version, platform=request.platform,
            channels=request.channels, notes=request.notes,
            update_type=request.update_type))


def build_agent_tree(dest: Path, request: AgentReleaseRequest, wheelhouse: Path) -> Path:
    """``dest`` with ``bin/fleetup`` and ``lib/``; returns ``dest``."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for wheel in request.wheels:
        if not wheel.is_file():
            raise UsageError(f"--wheel {wheel}: no such file")
        shutil.copy2(wheel, wheelhouse / wheel.name)
    own = _fleetup_wheel(wheelhouse, request.version)
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--target", str(dest / "lib"), "--find-links", str(wheelhouse),
            *pip_platform_args(request.platform),
            *(["--no-index"] if request.no_index else []), str(own)]
    _pip(argv, "install the agent's wheels")
    finish_tree(dest, request.platform)
    return dest


def _fleetup_wheel(wheelhouse: Path, version: str) -> Path:
    """The fleetup wheel of ``version`` among the given ones, else one built from the
    checkout this fleetup runs from (if it is one, and of that version)."""
    found = sorted(wheelhouse.glob(f"fleetup-{version}-*.whl"))
    if found:
        return found[0]
    checkout = Path(fleetup.__file__).resolve().parents[2]
    if not (checkout / "pyproject.toml").is_file():
        raise UsageError(f"no fleetup-{version}-*.whl among --wheel and no checkout to "
                         f"build one from")
    if fleetup.__version__ != version:
        raise UsageError(f"the checkout at {checkout} is fleetup {fleetup.__version__}, not "
                         f"{version}: pass --wheel fleetup-{version}-...whl")
    return build_wheel(checkout, wheelhouse)


def build_wheel(checkout: Path, dest: Path) -> Path:
    """``pip wheel --no-deps`` of a fleetup source checkout into ``dest``.

    Raises:
        SourceTreeError: the build failed.
    """
    before = set(dest.glob("fleetup-*.whl"))
    _pip([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--no-deps", "-w", str(dest), str(checkout)], f"build a wheel of {checkout}")
    made = sorted(set(dest.glob("fleetup-*.whl")) - before) or sorted(before)
    if not made:
        raise SourceTreeError(f"pip built no fleetup wheel from {checkout}")
    return made[-1]


def _pip(argv: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=PIP_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceTreeError(f"cannot {what}: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SourceTreeError(f"cannot {what}: pip exited {done.returncode}: {tail}")
