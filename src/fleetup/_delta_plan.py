"""The pure half of fleetup's deltas: what changed between two trees and how to carry it.

Everything here decides from manifests and measured sizes alone, with no IO, so the
publisher's choices and the device's reading of a patch header are unit-tested without
files:

- :func:`detect_moves` finds renamed directories (``pip-24.3/`` → ``pip-24.3.1/``,
  ``Django-5.1.3.dist-info/`` → ``django-5.1.4.dist-info/``), so a release whose
  version is in a directory name does not look like a whole new tree;
- :func:`plan_delta` says, for each new entry, whether an old file has its content
  (unchanged, renamed or moved) or which old file it most likely resembles;
- :func:`choose_method` and :func:`pack_segments` pick an encoding per changed file and
  group files encoded alike into segments whose memory on the device is bounded;
  :func:`candidate_layouts` also offers whole-tree layouts for the publisher to measure;
- :func:`header_for` writes the patch header; :func:`compose` is its inverse on the
  device, and treats the header as hostile: every path, size, reference and bound is
  checked before anything is read or allocated.

The wire format itself is described in :mod:`fleetup._delta`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from fleetup._manifest import Entry, EntryType, TreeManifest
from fleetup._paths import PathRejectedError, check_member_path
from fleetup.errors import DeltaError, UnsafeArchiveError

__all__ = [
    "CONTEXT_MAX",
    "DELTA_FORMAT",
    "SEGMENT_MAX",
    "Codec",
    "DeltaHeader",
    "Method",
    "Part",
    "PlanItem",
    "PutEntry",
    "Recipe",
    "Segment",
    "SegmentSpec",
    "candidate_layouts",
    "choose_method",
    "compose",
    "detect_moves",
    "header_for",
    "move_path",
    "pack_segments",
    "plan_delta",
    "shape",
    "zdict_context",
]

DELTA_FORMAT = "fleetup-delta/2"
# Reference plus target bytes of one segment: what the device holds in memory at once.
SEGMENT_MAX = 64 << 20
# Old files (besides the bases) a zstd-dictionary segment may use as shared context.
CONTEXT_MAX = 4 << 20
_MAX_XZ_WINDOW_LOG = 26

# Runs that change from release to release: versions, build numbers, hex hashes.
_VERSIONISH = re.compile(r"[0-9a-f]*[0-9][0-9a-f.]*")


def shape(name: str) -> str:
    """``name`` with its version-like runs blurred: ``Django-5.1.3.dist-info`` and
    ``django-5.1.4.dist-info`` have the same shape, ``lib-9f3a1c.so`` and
    ``lib-77b0e2.so`` too."""
    return _VERSIONISH.sub("#", name.lower())


# -- directory moves ----------------------------------------------------------------


def move_path(path: str, moves: Mapping[str, str]) -> str:
    """Where ``path`` lands when each directory ``a`` in ``moves`` is renamed ``moves[a]``.

    The longest moved prefix wins, so nested moves compose.
    """
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in moves:
            return "/".join([moves[prefix], *parts[i:]])
    return path


def detect_moves(old: TreeManifest, new: TreeManifest) -> dict[str, str]:
    """Directories renamed between the trees, as ``{old path: new path}``.

    A directory only in the new tree takes the place of one that has gone from the old
    tree when both sit in the same (possibly itself moved) parent and have the same
    :func:`shape`; among several, the one sharing the most child names wins.
    """
    old_paths = {e.path for e in old.entries}
    new_paths = {e.path for e in new.entries}
    old_children = _children(old)
    new_children = _children(new)
    moves: dict[str, str] = {}
    back: dict[str, str] = {}
    new_dirs = [e.path for e in new.entries if e.type is EntryType.DIR]
    for path in sorted(new_dirs, key=lambda p: (p.count("/"), p)):
        if move_path(path, back) in old_paths:
            continue
        parent, _, name = path.rpartition("/")
        old_parent = move_path(parent, back) if parent else ""
        candidates = [
            o for o in old_children.get(old_parent, {}).get("dirs", ())
            if o not in moves and shape(posixpath.basename(o)) == shape(name)
            and move_path(o, moves) not in new_paths
        ]
        if candidates:
            names = new_children.get(path, {}).get("names", set())
            best = max(candidates, key=lambda o: (
                len(names & old_children.get(o, {}).get("names", set())), o))
            moves[best] = path
            back[path] = best
    return moves


def _children(tree: TreeManifest) -> dict[str, dict[str, set[str]]]:
    """For each directory (``""`` is the root): its child directory paths and names."""
    result: dict[str, dict[str, set[str]]] = {}
    for entry in tree.entries:
        parent, _, name = entry.path.rpartition("/")
        slot = result.setdefault(parent, {"dirs": set(), "names": set()})
        slot["names"].add(name)
        if entry.type is EntryType.DIR:
            slot["dirs"].add(entry.path)
    return result


# -- the plan -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanItem:
    """How one entry of the new tree may be produced.

    ``copy_from``: an old file with the same content (unchanged, renamed or moved).
    ``base``: otherwise, the old file it most likely resembles, or ``None`` (new).
    """

    entry: Entry
    copy_from: str | None = None
    base: str | None = None


def plan_delta(old: TreeManifest, new: TreeManifest) -> list[PlanItem]:
    """For each new entry: an old file with its content, else the likeliest base.

    The base is the old file at the same path (after directory moves), else one whose
    path has the same shape, the same name, or a name of the same shape — the closest
    in size. Pure: decides from the manifests alone.
    """
    return plan_with_moves(old, new, detect_moves(old, new))


def plan_with_moves(old: TreeManifest, new: TreeManifest,
                    moves: Mapping[str, str]) -> list[PlanItem]:
    """:func:`plan_delta` with the directory moves already known."""
    back = {n: o for o, n in moves.items()}
    old_files = {e.path: e for e in old.entries if e.type is EntryType.FILE}
    by_hash: dict[str, str] = {}
    similar: dict[str, list[str]] = {}
    for path, entry in sorted(old_files.items()):
        by_hash.setdefault(entry.sha256, path)
        for key in _similarity_keys(move_path(path, moves)):
            similar.setdefault(key, []).append(path)
    plan: list[PlanItem] = []
    for entry in new.entries:
        if entry.type is not EntryType.FILE:
            plan.append(PlanItem(entry))
            continue
        same = old_files.get(move_path(entry.path, back))
        if same is not None and same.sha256 == entry.sha256:
            plan.append(PlanItem(entry, copy_from=same.path))
        elif entry.sha256 in by_hash:
            plan.append(PlanItem(entry, copy_from=by_hash[entry.sha256]))
        elif same is not None:
            plan.append(PlanItem(entry, base=same.path))
        else:
            plan.append(PlanItem(entry, base=_closest(entry, similar, old_files)))
    return plan


def _similarity_keys(path: str) -> tuple[str, ...]:
    name = posixpath.basename(path)
    return "path:" + shape(path), "name:" + name, "shape:" + shape(name)


def _closest(entry: Entry, similar: Mapping[str, list[str]],
             old_files: Mapping[str, Entry]) -> str | None:
    for key in _similarity_keys(entry.path):
        candidates = similar.get(key)
        if candidates:
            return min(candidates, key=lambda p: (abs(old_files[p].size - entry.size), p))
    return None


# -- methods and segments ---------------------------------------------------------------


class Method(StrEnum):
    """How a segment's files are carried; the values are the wire names."""

    LIT = "lit"        # the bytes themselves, compressed
    ZDICT = "zdict"    # a zstd frame with old files as dictionary (``zstd --patch-from``)
    HDIFF = "hdiff"    # an HDiffPatch diff against the old files, compressed
    BSDIFF = "bsdiff"  # a bsdiff4 diff against the old files, compressed


class Codec(StrEnum):
    """How a ``lit``, ``hdiff`` or ``bsdiff`` payload is compressed; wire names."""

    ZSTD = "zstd"
    XZ = "xz"          # raw LZMA2


# Ties go to the method that is cheapest to apply.
_PREFERENCE = (Method.LIT, Method.ZDICT, Method.HDIFF, Method.BSDIFF)


def choose_method(costs: Mapping[Method, int]) -> Method:
    """The method with the smallest measured size; ties go to the cheaper to apply."""
    if not costs:
        return Method.LIT
    return min(costs, key=lambda m: (costs[m], _PREFERENCE.index(m)))


@dataclass(frozen=True, slots=True)
class Part:
    """A file of the new tree that the patch carries, and the old file it resembles."""

    path: str
    size: int
    base: str | None = None
    base_size: int = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """Files carried together by one method: one payload in the patch."""

    method: Method
    parts: tuple[Part, ...]

    @property
    def bases(self) -> tuple[str, ...]:
        """The distinct old files the parts are coded against, in order."""
        if self.method is Method.LIT:
            return ()
        return tuple(dict.fromkeys(p.base for p in self.parts if p.base is not None))

    @property
    def target_size(self) -> int:
        return sum(p.size for p in self.parts)


def segment_memory(method: Method, parts: Iterable[Part]) -> int:
    """Bytes a device holds at once for these parts: bases plus targets (``lit`` streams)."""
    if method is Method.LIT:
        return 0
    parts = list(parts)
    bases = {p.base: p.base_size for p in parts if p.base is not None}
    return sum(bases.values()) + sum(p.size for p in parts)


def pack_segments(method: Method, parts: Sequence[Part],
                  limit: int = SEGMENT_MAX) -> list[Segment]:
    """Group ``parts`` (in order) into segments each needing at most ``limit`` bytes.

    A part that alone exceeds the limit gets a segment of its own (the chooser only
    gives such parts to ``lit``, which streams).
    """
    segments: list[Segment] = []
    current: list[Part] = []
    for part in parts:
        if current and segment_memory(method, [*current, part]) > limit:
            segments.append(Segment(method, tuple(current)))
            current = []
        current.append(part)
    if current:
        segments.append(Segment(method, tuple(current)))
    return segments


Layout = tuple[Segment, ...]


def candidate_layouts(parts: Sequence[Part], costs: Mapping[str, Mapping[Method, int]],
                      allowed: Iterable[Method], *, whole_zdict_max: int = 8 << 20
                      ) -> list[Layout]:
    """Ways to carry ``parts`` for the publisher to encode and measure.

    First the per-file choice (each part by :func:`choose_method` over its measured
    ``costs``, parts of one method packed together); then whole-tree layouts: every
    part with a base in one HDiffPatch diff, and every part in zstd-dictionary
    segments (only up to ``whole_zdict_max`` bytes: zstd's optimal parser is slow).
    """
    allowed = set(allowed) | {Method.LIT}
    layouts: list[Layout] = [_per_file_layout(parts, costs)]
    diffable = [p for p in parts if p.base is not None
                and segment_memory(Method.HDIFF, [p]) <= SEGMENT_MAX]
    if Method.HDIFF in allowed and diffable:
        rest = [p for p in parts if p not in diffable]
        layouts.append(_layout({Method.HDIFF: diffable, Method.LIT: rest}))
    if Method.ZDICT in allowed and sum(p.size for p in parts) <= whole_zdict_max:
        layouts.append(_layout({Method.ZDICT: list(parts)}))
    return list(dict.fromkeys(layouts))


def _per_file_layout(parts: Sequence[Part],
                     costs: Mapping[str, Mapping[Method, int]]) -> Layout:
    groups: dict[Method, list[Part]] = {}
    for part in parts:
        method = choose_method(costs.get(part.path, {}))
        if segment_memory(method, [part]) > SEGMENT_MAX:
            method = Method.LIT  # too big to hold in memory: only streaming will do
        groups.setdefault(method, []).append(part)
    return _layout(groups)


def _layout(groups: Mapping[Method, Sequence[Part]]) -> Layout:
    segments: list[Segment] = []
    for method in _PREFERENCE:
        if groups.get(method):
            limit = 1 << 62 if method is Method.LIT else SEGMENT_MAX
            segments.extend(pack_segments(method, groups[method], limit))
    return tuple(segments)


def zdict_context(old: TreeManifest, bases: Sequence[str], budget: int) -> list[str]:
    """Old files to put before ``bases`` in a zstd dictionary, at most ``budget`` bytes.

    Files nearest to the bases (sharing the longest directory prefix) come first in the
    choice and last in the result, next to the bases. Deterministic, so the device
    recomputes the same list from the header's budget.
    """
    if budget <= 0:
        return []
    depth_of: dict[str, int] = {"": 0}
    for base in bases:
        parts = base.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            depth_of["/".join(parts[:i])] = i
    excluded = set(bases)
    scored = []
    for entry in old.entries:
        if entry.type is EntryType.FILE and entry.path not in excluded and entry.size:
            scored.append((_nearness(entry.path, depth_of), entry.path, entry.size))
    chosen: list[tuple[int, str]] = []
    left = budget
    for score, path, size in sorted(scored, key=lambda t: (-t[0], t[1])):
        if size <= left:
            chosen.append((score, path))
            left -= size
    return [path for _, path in sorted(chosen)]


def _nearness(path: str, depth_of: Mapping[str, int]) -> int:
    parts = path.split("/")[:-1]
    for i in range(len(parts), 0, -1):
        depth = depth_of.get("/".join(parts[:i]))
        if depth is not None:
            return depth
    return 0


# -- the header ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """A segment as the header describes it: method, payload length and parameters."""

    method: Method
    length: int
    codec: Codec | None = None   # lit, hdiff, bsdiff
    window: int = 0              # xz: log2 of the LZMA2 dictionary size
    context: int = 0             # zdict: budget of old-tree context bytes
    control: int = 0             # bsdiff: bytes of control triples

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"method": self.method.value, "len": self.length}
        if self.codec is not None:
            body["codec"] = self.codec.value
        for key, value in (("window", self.window), ("context", self.context),
                           ("control", self.control)):
            if value:
                body[key] = value
        return body


@dataclass(frozen=True, slots=True)
class PutEntry:
    """A new or changed entry. A file comes ``copy_from`` an old file, or from segment
    ``segment``, coded against ``base`` (``None``: the old file at its own path)."""

    entry: Entry
    copy_from: str | None = None
    segment: int | None = None
    base: str | None = None

    def to_dict(self, previous_segment: int = 0) -> dict[str, object]:
        """The wire form; ``seg`` is left out when it is ``previous_segment``."""
        body = self.entry.to_dict()
        body.pop("sha256", None)
        if self.copy_from is not None:
            body["from"] = self.copy_from
        if self.segment is not None and self.segment != previous_segment:
            body["seg"] = self.segment
        if self.base is not None:
            body["base"] = self.base
        return body


@dataclass(frozen=True, slots=True)
class DeltaHeader:
    """Everything a device needs to know before it reads the first payload byte."""

    moves: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()
    put: tuple[PutEntry, ...] = ()
    segments: tuple[SegmentSpec, ...] = ()

    def to_dict(self) -> dict[str, object]:
        put, segment = [], 0
        for item in self.put:
            put.append(item.to_dict(segment))
            segment = segment if item.segment is None else item.segment
        return {"format": DELTA_FORMAT, "moves": [list(m) for m in self.moves],
                "drop": list(self.drop), "put": put,
                "segments": [s.to_dict() for s in self.segments]}


def header_for(old: TreeManifest, new: TreeManifest, plan: Sequence[PlanItem],
               moves: Mapping[str, str], layout: Layout,
               specs: Sequence[SegmentSpec]) -> DeltaHeader:
    """The header that turns ``old`` into ``new``: moves, drops, and every new entry
    that is not an old one (after the moves) unchanged."""
    moved = {move_path(e.path, moves): e for e in old.entries}
    back = {n: o for o, n in moves.items()}
    old_files = {e.path: e for e in old.entries if e.type is EntryType.FILE}
    where = {part.path: (i, part) for i, seg in enumerate(layout) for part in seg.parts}
    put: list[PutEntry] = []
    for item in plan:
        entry = item.entry
        before = moved.get(entry.path)
        if before is not None and _same(before, entry):
            continue
        if entry.type is not EntryType.FILE:
            put.append(PutEntry(entry))
        elif item.copy_from is not None:
            put.append(PutEntry(entry, copy_from=item.copy_from))
        else:
            index, part = where[entry.path]
            default = _default_base(entry.path, back, old_files)
            explicit = layout[index].method is not Method.LIT and part.base != default
            put.append(PutEntry(entry, segment=index, base=part.base if explicit else None))
    new_paths = {e.path for e in new.entries}
    drop = tuple(sorted(p for p in moved if p not in new_paths))
    return DeltaHeader(tuple(sorted(moves.items())), drop, tuple(put), tuple(specs))


def _same(before: Entry, after: Entry) -> bool:
    return (before.type, before.mode, before.size, before.sha256, before.target) == (
        after.type, after.mode, after.size, after.sha256, after.target)


def _default_base(path: str, back: Mapping[str, str],
                  old_files: Mapping[str, Entry]) -> str | None:
    """The base a file has when the header names none: the old file at its path."""
    candidate = move_path(path, back)
    return candidate if candidate in old_files else None


# -- reading a header on the device ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedSegment:
    """A segment the device will decode: its spec, the files it makes, and its reference."""

    spec: SegmentSpec
    files: tuple[Entry, ...]
    ref: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Recipe:
    """The new tree as a device will write it, checked against the installed one."""

    dirs: tuple[Entry, ...]
    links: tuple[Entry, ...]
    copies: tuple[tuple[Entry, str], ...]
    segments: tuple[PlannedSegment, ...]
    size: int
    count: int


def compose(old: TreeManifest, header: object) -> Recipe:
    """Check a decoded header against the installed tree ``old`` and say what to write.

    Raises:
        DeltaError: the header is malformed, names files that are not in the installed
            tree, moves entries onto each other, or asks for more memory than allowed.
        UnsafeArchiveError: a new path is absolute, has ``..`` or is otherwise unsafe.
    """
    body = _mapping(header, "patch header")
    if body.get("format") != DELTA_FORMAT:
        raise DeltaError("unknown delta format")
    _only(body, {"format", "moves", "drop", "put", "segments"}, "patch header")
    old_files = {e.path: e for e in old.entries if e.type is EntryType.FILE}
    moves = _parse_moves(body.get("moves", []), old)
    tree = _moved_tree(old, moves)
    for path in _strings(body.get("drop", []), "drop"):
        if tree.pop(path, None) is None:
            raise DeltaError(f"patch drops {path!r}, which is not in the installed tree")
    specs = [_parse_spec(raw) for raw in _list(body.get("segments", []), "segments")]
    puts: dict[str, PutEntry] = {}
    segment = 0
    for raw in _list(body.get("put", []), "put"):
        put = _parse_put(raw, old_files, len(specs), segment)
        if put.entry.path in puts:
            raise UnsafeArchiveError(f"{put.entry.path}: duplicate entry")
        tree[put.entry.path] = (put.entry, put)
        puts[put.entry.path] = put
        segment = segment if put.segment is None else put.segment
    back = {n: o for o, n in moves.items()}
    return _recipe(tree, specs, list(puts.values()), old, old_files, back)


_Slot = tuple[Entry, "PutEntry | str"]


def _moved_tree(old: TreeManifest, moves: Mapping[str, str]) -> dict[str, _Slot]:
    tree: dict[str, _Slot] = {}
    for entry in old.entries:
        path = move_path(entry.path, moves) if moves else entry.path
        if path in tree:
            raise DeltaError(f"patch moves two entries of the installed tree to {path}")
        tree[path] = (entry if path == entry.path else _at(entry, path), entry.path)
    return tree


def _at(entry: Entry, path: str) -> Entry:
    return Entry(path, entry.type, entry.mode, entry.size, entry.sha256, entry.target)


def _recipe(tree: Mapping[str, _Slot], specs: Sequence[SegmentSpec], puts: Sequence[PutEntry],
            old: TreeManifest, old_files: Mapping[str, Entry],
            back: Mapping[str, str]) -> Recipe:
    dirs, links, copies = [], [], []
    for path in sorted(tree, key=lambda p: p.split("/")):
        entry, origin = tree[path]
        if entry.type is EntryType.DIR:
            dirs.append(entry)
        elif entry.type is EntryType.LINK:
            links.append(entry)
        elif isinstance(origin, str):
            copies.append((entry, origin))
        elif origin.copy_from is not None:
            copies.append((entry, origin.copy_from))
    segments = _plan_segments(specs, puts, old, old_files, back)
    size = sum(e.size for e, _ in tree.values() if e.type is EntryType.FILE)
    return Recipe(tuple(dirs), tuple(links), tuple(copies), segments, size, len(tree))


def _plan_segments(specs: Sequence[SegmentSpec], puts: Sequence[PutEntry],
                   old: TreeManifest, old_files: Mapping[str, Entry],
                   back: Mapping[str, str]) -> tuple[PlannedSegment, ...]:
    members: list[list[PutEntry]] = [[] for _ in specs]
    for put in puts:
        if put.segment is not None:
            members[put.segment].append(put)
    planned = []
    for index, (spec, group) in enumerate(zip(specs, members, strict=True)):
        if not group:
            raise DeltaError(f"segment {index} of the patch makes no file")
        parts = [_part(put, back, old_files) for put in group]
        segment = Segment(spec.method, tuple(parts))
        memory = segment_memory(spec.method, parts)
        if memory > SEGMENT_MAX:
            raise DeltaError(f"segment {index} needs {memory} bytes in memory, "
                             f"more than the {SEGMENT_MAX} allowed")
        ref = segment.bases
        if spec.method is Method.ZDICT:
            ref = (*zdict_context(old, ref, spec.context), *ref)
        planned.append(PlannedSegment(spec, tuple(p.entry for p in group), ref))
    return tuple(planned)


def _part(put: PutEntry, back: Mapping[str, str], old_files: Mapping[str, Entry]) -> Part:
    base = put.base or _default_base(put.entry.path, back, old_files)
    size = old_files[base].size if base is not None else 0
    return Part(put.entry.path, put.entry.size, base, size)


def _parse_moves(raw: object, old: TreeManifest) -> dict[str, str]:
    kinds = {e.path: e.type for e in old.entries}
    moves: dict[str, str] = {}
    for item in _list(raw, "moves"):
        pair = _strings(item, "move")
        if len(pair) != 2:
            raise DeltaError("patch header has a malformed move")
        source, dest = pair
        if kinds.get(source) is not EntryType.DIR:
            raise DeltaError(
                f"patch moves {source!r}, which is not a directory of the installed tree")
        if source in moves:
            raise DeltaError(f"patch moves {source!r} twice")
        moves[source] = _safe_path(dest)
    return moves


def _parse_spec(raw: object) -> SegmentSpec:
    body = _mapping(raw, "segment")
    _only(body, {"method", "len", "codec", "window", "context", "control"}, "segment")
    try:
        method = Method(str(body.get("method")))
        codec = Codec(str(body["codec"])) if "codec" in body else None
    except ValueError as e:
        raise DeltaError(f"patch segment has an unknown method or codec: {e}") from None
    spec = SegmentSpec(method, _count(body.get("len"), "len"), codec,
                       _count(body.get("window", 0), "window"),
                       _count(body.get("context", 0), "context"),
                       _count(body.get("control", 0), "control"))
    if (codec is None) != (method is Method.ZDICT):
        raise DeltaError(f"patch segment of method {method} has a wrong codec")
    if codec is Codec.XZ and not 12 <= spec.window <= _MAX_XZ_WINDOW_LOG:
        raise DeltaError(f"patch segment asks for an xz window of 2^{spec.window} bytes")
    if spec.context > CONTEXT_MAX:
        raise DeltaError(f"patch segment asks for {spec.context} bytes of context")
    return spec


def _parse_put(raw: object, old_files: Mapping[str, Entry], segments: int,
               previous_segment: int) -> PutEntry:
    body = _mapping(raw, "entry")
    _only(body, {"path", "type", "mode", "size", "target", "from", "seg", "base"}, "entry")
    path = _safe_path(body.get("path"))
    kind = body.get("type")
    if kind == "dir":
        return PutEntry(Entry(path, EntryType.DIR, _count(body.get("mode"), "mode") & 0o777))
    if kind == "link":
        target = body.get("target")
        if not isinstance(target, str):
            raise DeltaError(f"{path}: symlink without a target")
        return PutEntry(Entry(path, EntryType.LINK, 0o777, target=target))
    if kind != "file":
        raise DeltaError(f"{path}: unknown entry type {kind!r}")
    entry = Entry(path, EntryType.FILE, _count(body.get("mode"), "mode") & 0o777,
                  _count(body.get("size"), "size"))
    if "from" in body:
        if "seg" in body or "base" in body:
            raise DeltaError(f"{path}: copied from an old file and decoded at once")
        source = _old_file(body["from"], old_files)
        if old_files[source].size != entry.size:
            raise DeltaError(f"{path}: copied from {source}, which has another size")
        return PutEntry(entry, copy_from=source)
    segment = _count(body.get("seg", previous_segment), "seg")
    if segment >= segments:
        raise DeltaError(f"{path}: refers to segment {segment}, which the patch lacks")
    base = _old_file(body["base"], old_files) if "base" in body else None
    return PutEntry(entry, segment=segment, base=base)


def _old_file(value: object, old_files: Mapping[str, Entry]) -> str:
    if not isinstance(value, str) or value not in old_files:
        raise DeltaError(f"patch refers to {value!r}, which is not a file of the installed tree")
    return value


def _safe_path(value: object) -> str:
    if not isinstance(value, str):
        raise DeltaError(f"patch header has a path that is not a string: {value!r}")
    try:
        return check_member_path(value)
    except PathRejectedError as e:
        raise UnsafeArchiveError(f"{value!r}: {e}") from None


def _mapping(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise DeltaError(f"malformed {what} in the patch")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise DeltaError(f"patch header field {what!r} is not a list")
    return value


def _strings(value: object, what: str) -> list[str]:
    items = _list(value, what)
    if not all(isinstance(i, str) for i in items):
        raise DeltaError(f"patch header field {what!r} holds something other than paths")
    return [str(i) for i in items]


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise DeltaError(f"patch header field {what!r} is not a valid count: {value!r}")
    return value


def _only(body: Mapping[str, object], keys: set[str], what: str) -> None:
    unknown = set(body) - keys
    if unknown:
        raise DeltaError(f"unknown field {sorted(unknown)[0]!r} in a {what} of the patch")
