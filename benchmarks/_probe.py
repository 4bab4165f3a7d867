"""One measured operation in a fresh interpreter, so its peak memory is its own.

    python -m benchmarks._probe OP ARGS...

Prints what the caller checks, then ``seconds=<float>``: the time of the operation
itself, without interpreter start-up, imports, or reading manifests the caller already
has (a publisher has both manifests; a device has the installed one on disk).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import bsdiff4
import zstandard  # noqa: F401 - imported by every probe, so "idle" weighs the same

from fleetup._archive import extract_archive
from fleetup._delta import DeltaNotWorthItError, Method, apply_delta, make_delta
from fleetup._manifest import TreeManifest, scan_tree
from fleetup.repository import RepoConfig
from fleetup.repository._publisher import delta_budget


def idle() -> None:
    """Nothing: the interpreter and the imports every probe pays for."""


def bsdiff4_diff(old: str, new: str, patch: str) -> None:
    bsdiff4.file_diff(old, new, patch)


def bsdiff4_patch(old: str, patch: str, out: str) -> None:
    bsdiff4.file_patch(old, out, patch)


def hdiff_diff(old: str, new: str, patch: str, codec: str) -> None:
    import hdiffpatch  # the bench extra: deltas.py leaves these rows out without it

    config: hdiffpatch.BaseConfig | Literal["lzma2"] = (
        hdiffpatch.ZStdConfig(level=22, window=27) if codec == "zstd" else "lzma2")
    Path(patch).write_bytes(hdiffpatch.diff(Path(old).read_bytes(), Path(new).read_bytes(),
                                            config, validate=False))


def hdiff_patch(old: str, patch: str, out: str) -> None:
    import hdiffpatch

    Path(out).write_bytes(hdiffpatch.apply(Path(old).read_bytes(), Path(patch).read_bytes()))


def fleetup_make(old_dir: str, new_dir: str, patch: str, full_size: str) -> Callable[[], None]:
    """As ``release add`` does with a default repository: its methods, and no delta
    (``no-delta`` printed, the patch left empty) unless it saves a tenth of the archive."""
    old, new = scan_tree(Path(old_dir)), scan_tree(Path(new_dir))
    methods = {Method(m) for m in RepoConfig().delta_methods}
    budget = delta_budget(int(full_size))

    def run() -> None:
        with open(patch, "wb") as out:
            try:
                make_delta(Path(old_dir), old, Path(new_dir), new, out, methods=methods,
                           give_up_above=budget)
            except DeltaNotWorthItError:
                out.truncate(0)
        if Path(patch).stat().st_size > budget:
            Path(patch).write_bytes(b"")
        if Path(patch).stat().st_size == 0:
            print("no-delta")
    return run


def fleetup_apply(old_dir: str, manifest: str, patch: str, dest: str) -> Callable[[], None]:
    old = TreeManifest.from_json(Path(manifest).read_bytes())

    def run() -> None:
        with open(patch, "rb") as f:
            rebuilt = apply_delta(f, Path(old_dir), old, Path(dest), max_size=1 << 40,
                                  max_entries=1 << 30)
        print(rebuilt.digest())
    return run


def fleetup_unpack(archive: str, dest: str) -> None:
    with open(archive, "rb") as f:
        unpacked = extract_archive(f, Path(dest), max_size=1 << 40, max_entries=1 << 30)
    print(unpacked.digest())


# Operations that read inputs first return the timed part as a function.
OPS: dict[str, Callable[..., Callable[[], None] | None]] = {
    "idle": idle, "bsdiff4-diff": bsdiff4_diff, "bsdiff4-patch": bsdiff4_patch,
    "hdiff-diff": hdiff_diff, "hdiff-patch": hdiff_patch,
    "fleetup-make": fleetup_make, "fleetup-apply": fleetup_apply,
    "fleetup-unpack": fleetup_unpack,
}


def main(argv: list[str]) -> None:
    op = OPS[argv[0]]
    if op in (fleetup_make, fleetup_apply):
        timed = op(*argv[1:])
        assert timed is not None
        start = time.perf_counter()
        timed()
    else:
        start = time.perf_counter()
        op(*argv[1:])
    print(f"seconds={time.perf_counter() - start:.6f}")


if __name__ == "__main__":
    main(sys.argv[1:])
