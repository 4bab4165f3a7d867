"""Delta size on real releases: fleetup's patch beside every usual way to ship a diff.

For each pair of ``releases.txt`` (downloaded once from PyPI with pip, cached), both
releases are unpacked into trees. fleetup diffs the trees; the baselines diff a
deterministic tar of each tree (the bytes of fleetup's release archive, uncompressed),
except "bsdiff4 (archives)", which diffs the compressed release archives as tufup does.
"full archive" is what a device downloads without any delta. Every tool runs in its own
process: seconds are the operation's own (a Python probe leaves out start-up), peak
memory is the process's maximum resident set (``wait4``), and each output is checked
against the expected bytes (fleetup's against the signed tree digest).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from benchmarks import (
    ROOT,
    Comparison,
    Context,
    Measurement,
    Result,
    measure,
    python_probe,
    storage_of,
)
from fleetup._archive import DEFAULT_LEVEL, build_archive
from fleetup._manifest import scan_tree
from fleetup.repository import RepoConfig

__all__ = ["TITLE", "Pair", "load_pairs", "run"]

TITLE = "Delta size on real releases (unpacked trees)"
RELEASES = ROOT / "releases.txt"
FLEETUP = "fleetup"
BSDIFF_TREE = "bsdiff4 (tree)"
FULL = "full archive"
# Issue 18: a publisher diffs each pair in at most this long, in at most this much memory.
DIFF_SECONDS_GOAL = 30.0
DIFF_MB_GOAL = 1000.0
COLUMNS = ["pair", "tool", "patch bytes", "x fleetup", "diff s", "apply s", "diff peak MB",
           "apply peak MB", "output ok"]


@dataclass(frozen=True)
class Pair:
    """Two consecutive releases of one package, as ``releases.txt`` names them."""

    name: str
    old: str
    new: str
    kind: str
    python: str = ""
    platform: str = ""
    quick: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} {self.old}->{self.new}" + (" sdist" if self.kind == "sdist" else "")


def load_pairs(path: Path = RELEASES) -> list[Pair]:
    pairs = []
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        quick = words[-1] == "quick"
        words = words[:-1] if quick else words
        name, old, new, kind, *binary = words
        python, platform = binary if len(binary) == 2 else ("", "")
        pairs.append(Pair(name, old, new, kind, python, platform, quick))
    return pairs


# -- getting the trees ------------------------------------------------------------------------


def fetch(pair: Pair, version: str, cache: Path, log: Callable[[str], None]) -> Path:
    """The release file from PyPI (``pip download``), kept in ``cache``."""
    where = cache / "downloads" / f"{pair.name}-{version}-{pair.kind}-{pair.platform or 'any'}"
    if where.is_dir() and len(files := list(where.iterdir())) == 1:
        return files[0]
    log(f"downloading {pair.name} {version} ({pair.kind})")
    partial = where.with_name(where.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
           str(partial), f"{pair.name}=={version}"]
    if pair.kind == "sdist":
        cmd += ["--no-binary", ":all:"]
    else:
        cmd += ["--only-binary", ":all:"]
    if pair.platform:
        cmd += ["--platform", pair.platform, "--implementation", "cp", "--abi", pair.python,
                "--python-version", f"{pair.python[2]}.{pair.python[3:]}"]
    # A machine-wide pip constraints file (PIP_CONSTRAINT, pip.conf) pins what this
    # machine installs, not what it may download to diff: it is switched off here.
    subprocess.run(cmd, check=True, env={**os.environ, "PIP_CONSTRAINT": ""})
    shutil.rmtree(where, ignore_errors=True)
    partial.rename(where)
    return next(where.iterdir())


def unpack(archive: Path, dest: Path) -> Path:
    """The release file unpacked into ``dest`` (once; kept in the cache)."""
    if dest.is_dir():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(partial)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(partial, filter="data")
    partial.rename(dest)
    return dest


def tree(pair: Pair, version: str, ctx: Context) -> Path:
    archive = fetch(pair, version, ctx.cache, ctx.log)
    return unpack(archive, ctx.cache / "trees" / f"{archive.name}.d")


# -- one pair ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    tool: str
    size: int
    diff: Measurement | None = None
    apply: Measurement | None = None
    ok: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class Inputs:
    """The files of one pair in the scratch directory."""

    work: Path
    old_tree: Path
    new_tree: Path
    old_tar: Path
    new_tar: Path
    old_zst: Path
    new_zst: Path
    new_digest: str


def prepare(pair: Pair, ctx: Context, scratch: Path) -> Inputs:
    work = scratch / pair.name
    work.mkdir()
    old_tree, new_tree = tree(pair, pair.old, ctx), tree(pair, pair.new, ctx)
    paths: dict[str, Path] = {}
    manifests = {}
    for side, root in (("old", old_tree), ("new", new_tree)):
        manifest = scan_tree(root)
        manifests[side] = manifest
        paths[f"{side}_zst"] = work / f"{side}.tar.zst"
        with paths[f"{side}_zst"].open("wb") as out:
            build_archive(root, manifest, out, DEFAULT_LEVEL)
        paths[f"{side}_tar"] = work / f"{side}.tar"
        with paths[f"{side}_zst"].open("rb") as src, paths[f"{side}_tar"].open("wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
    (work / "old.manifest.json").write_bytes(manifests["old"].to_json())
    return Inputs(work, old_tree, new_tree, paths["old_tar"], paths["new_tar"],
                  paths["old_zst"], paths["new_zst"], manifests["new"].digest())


APPLY_RUNS = 3


def best_of(cmd: list[str], output: Path) -> Measurement:
    """The fastest of ``APPLY_RUNS`` runs (applying is quick; one run is mostly noise),
    with the highest peak memory; ``output`` is removed before each run."""
    runs = []
    for _ in range(APPLY_RUNS):
        _remove(output)
        runs.append(measure(cmd))
    fastest = min(runs, key=lambda m: m.seconds)
    return Measurement(fastest.seconds, max(m.peak_bytes for m in runs), fastest.stdout)


def run_fleetup(inputs: Inputs) -> Outcome:
    """``release add``'s delta with a default repository; when it publishes none, what a
    device downloads and unpacks instead: the full archive."""
    patch, dest = inputs.work / "fleetup.fdelta", inputs.work / "fleetup.tree"
    diff = measure(python_probe("fleetup-make", str(inputs.old_tree), str(inputs.new_tree),
                                str(patch), str(inputs.new_zst.stat().st_size)))
    if "no-delta" in diff.stdout.split():
        full = run_full_archive(inputs)
        return Outcome(FLEETUP, full.size, diff, full.apply, full.ok, " (no delta: full)")
    apply = best_of(python_probe("fleetup-apply", str(inputs.old_tree),
                                 str(inputs.work / "old.manifest.json"), str(patch), str(dest)),
                    dest)
    ok = apply.stdout.split()[0] == inputs.new_digest
    _remove(dest)
    return Outcome(FLEETUP, patch.stat().st_size, diff, apply, ok)


@dataclass(frozen=True)
class Baseline:
    """A file-to-file differ: commands to make ``patch`` and to rebuild ``out``."""

    name: str
    diff: Callable[[Path, Path, Path], list[str]]
    apply: Callable[[Path, Path, Path], list[str]]
    on_archives: bool = False
    needs: str = ""


def _xdelta_window(old: Path) -> str:
    return str(max(1 << 26, 1 << math.ceil(math.log2(old.stat().st_size + 1))))


BASELINES = [
    Baseline(BSDIFF_TREE, lambda o, n, p: python_probe("bsdiff4-diff", str(o), str(n), str(p)),
             lambda o, p, out: python_probe("bsdiff4-patch", str(o), str(p), str(out))),
    Baseline("bsdiff4 (archives, as tufup)",
             lambda o, n, p: python_probe("bsdiff4-diff", str(o), str(n), str(p)),
             lambda o, p, out: python_probe("bsdiff4-patch", str(o), str(p), str(out)),
             on_archives=True),
    Baseline("zstd -19 --patch-from",
             lambda o, n, p: ["zstd", "-q", "-f", "-19", "--long=31", f"--patch-from={o}",
                              str(n), "-o", str(p)],
             lambda o, p, out: ["zstd", "-q", "-f", "-d", "--long=31", f"--patch-from={o}",
                                str(p), "-o", str(out)], needs="zstd"),
    Baseline("xdelta3 -9 -S djw",
             lambda o, n, p: ["xdelta3", "-e", "-9", "-S", "djw", "-B", _xdelta_window(o), "-f",
                              "-s", str(o), str(n), str(p)],
             lambda o, p, out: ["xdelta3", "-d", "-B", _xdelta_window(o), "-f", "-s", str(o),
                                str(p), str(out)], needs="xdelta3"),
    Baseline("hdiffpatch (zstd-22)",
             lambda o, n, p: python_probe("hdiff-diff", str(o), str(n), str(p), "zstd"),
             lambda o, p, out: python_probe("hdiff-patch", str(o), str(p), str(out)),
             needs="hdiffpatch"),
    Baseline("hdiffpatch (lzma2)",
             lambda o, n, p: python_probe("hdiff-diff", str(o), str(n), str(p), "lzma2"),
             lambda o, p, out: python_probe("hdiff-patch", str(o), str(p), str(out)),
             needs="hdiffpatch"),
]


def available(baseline: Baseline) -> bool:
    if baseline.needs == "hdiffpatch":
        try:
            import hdiffpatch  # noqa: F401
        except ImportError:
            return False
        return True
    return not baseline.needs or shutil.which(baseline.needs) is not None


def run_baseline(baseline: Baseline, inputs: Inputs) -> Outcome:
    old, new = ((inputs.old_zst, inputs.new_zst) if baseline.on_archives
                else (inputs.old_tar, inputs.new_tar))
    patch, out = inputs.work / "baseline.patch", inputs.work / "baseline.out"
    diff = measure(baseline.diff(old, new, patch))
    apply = best_of(baseline.apply(old, patch, out), out)
    ok = _sha256(out) == _sha256(new)
    outcome = Outcome(baseline.name, patch.stat().st_size, diff, apply, ok)
    patch.unlink()
    out.unlink()
    return outcome


def run_full_archive(inputs: Inputs) -> Outcome:
    """What a device downloads without a delta, and unpacking it (fleetup's extractor)."""
    dest = inputs.work / "full.tree"
    apply = best_of(python_probe("fleetup-unpack", str(inputs.new_zst), str(dest)), dest)
    ok = apply.stdout.split()[0] == inputs.new_digest
    _remove(dest)
    return Outcome(FULL, inputs.new_zst.stat().st_size, None, apply, ok)


def unpack_tar_seconds(inputs: Inputs) -> float:
    """How long ``tar -x`` takes to turn a rebuilt tar into a tree, as a device must."""
    dest = inputs.work / "untar"
    dest.mkdir()
    seconds = measure(["tar", "-xf", str(inputs.new_tar), "-C", str(dest)]).seconds
    _remove(dest)
    return seconds


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir():
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- the section ------------------------------------------------------------------------------


def run(ctx: Context) -> Result:
    result = Result(TITLE, COLUMNS)
    idle = measure(python_probe("idle"))
    # On disk, as a publisher meets it, whatever the runner's scratch is (often tmpfs).
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=ctx.cache))
    try:
        for pair in load_pairs():
            if ctx.quick and not pair.quick:
                continue
            ctx.log(f"-- {pair.label}")
            _run_pair(pair, ctx, scratch, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.notes[:0] = [
        f"measured on {storage_of(scratch)}: trees, tars, patches and rebuilt trees;",
        "fleetup: `release add` with a default repository (methods "
        f"{', '.join(RepoConfig().delta_methods)}; no delta unless it saves a tenth of the "
        "full archive, then the device downloads the full archive);",
        "diff/apply s: the operation alone, in its own process; peak MB: that process's "
        f"maximum RSS (a Python probe idles at {idle.peak_bytes / 1e6:.0f} MB: interpreter, "
        "zstandard, bsdiff4, fleetup);",
        "fleetup apply writes and hashes the whole new tree through TreeWriter; the "
        "tar-based tools write one tar, which a device must still unpack: 'to a tree' adds "
        "GNU tar -x, 'to a checked tree' fleetup's own unpacker (same checks as fleetup's "
        f"apply); apply figures are the fastest of {APPLY_RUNS} runs;",
        f"full archive: fleetup's release archive (tar + zstd level {DEFAULT_LEVEL}); its "
        "apply is unpacking it with fleetup's extractor.",
    ]
    return result


def _run_pair(pair: Pair, ctx: Context, scratch: Path, result: Result) -> None:
    inputs = prepare(pair, ctx, scratch)
    outcomes = [run_fleetup(inputs)]
    for baseline in BASELINES:
        if available(baseline):
            ctx.log(f"   {baseline.name}")
            outcomes.append(run_baseline(baseline, inputs))
        elif (note := f"{baseline.name}: not installed, left out") not in result.notes:
            result.notes.append(note)
    outcomes.append(run_full_archive(inputs))
    untar = unpack_tar_seconds(inputs)
    result.rows.extend(_rows(pair, outcomes))
    result.comparisons.extend(_comparisons(pair, outcomes, untar))
    shutil.rmtree(inputs.work, ignore_errors=True)


def _rows(pair: Pair, outcomes: list[Outcome]) -> list[list[str]]:
    fleetup_size = outcomes[0].size
    rows = []
    for o in outcomes:
        rows.append([pair.label, o.tool + o.note, f"{o.size:,}", f"{o.size / fleetup_size:.2f}",
                     _secs(o.diff), _secs(o.apply), _mb(o.diff), _mb(o.apply),
                     {True: "yes", False: "NO", None: "-"}[o.ok]])
    return rows


def _comparisons(pair: Pair, outcomes: list[Outcome], untar: float) -> list[Comparison]:
    by_tool = {o.tool: o for o in outcomes}
    fleetup, bsdiff, full = by_tool[FLEETUP], by_tool[BSDIFF_TREE], by_tool[FULL]
    best = min((o for o in outcomes if o.tool not in (FLEETUP, FULL)), key=lambda o: o.size)
    f_diff, f_apply = _need(fleetup.diff), _need(fleetup.apply)
    b_diff, b_apply = _need(bsdiff.diff), _need(bsdiff.apply)
    case = pair.label
    return [
        Comparison(case, "patch size", fleetup.size, f"best: {best.tool}", best.size, "B"),
        Comparison(case, "apply time", f_apply.seconds, BSDIFF_TREE, b_apply.seconds, "s"),
        Comparison(case, "apply time, to a tree", f_apply.seconds, f"{BSDIFF_TREE} + tar -x",
                   b_apply.seconds + untar, "s"),
        Comparison(case, "apply time, to a checked tree", f_apply.seconds,
                   f"{BSDIFF_TREE} + safe unpack", b_apply.seconds + _need(full.apply).seconds,
                   "s"),
        Comparison(case, "apply peak memory", f_apply.peak_bytes / 1e6, BSDIFF_TREE,
                   b_apply.peak_bytes / 1e6, "MB"),
        Comparison(case, "diff time", f_diff.seconds, BSDIFF_TREE, b_diff.seconds, "s"),
        Comparison(case, "diff time", f_diff.seconds, "goal", DIFF_SECONDS_GOAL, "s"),
        Comparison(case, "diff peak memory", f_diff.peak_bytes / 1e6, "goal",
                   DIFF_MB_GOAL, "MB"),
    ]


def _need(m: Measurement | None) -> Measurement:
    if m is None:
        raise ValueError("a delta tool has no measurement")
    return m


def _secs(m: Measurement | None) -> str:
    return "-" if m is None else f"{m.seconds:.3f}"


def _mb(m: Measurement | None) -> str:
    return "-" if m is None else f"{m.peak_bytes / 1e6:.0f}"


if __name__ == "__main__":  # pragma: no cover - a shortcut for `python -m benchmarks deltas`
    from benchmarks.__main__ import main
    sys.exit(main(["deltas", *sys.argv[1:]]))
