"""Member-path and symlink-escape rules, by table and by property.

The last property builds each generated link table on disk and asks the kernel (through
``os.path.realpath``) where each link leads: whatever ``link_escapes`` calls safe must
really stay inside the tree.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fleetup._paths import (
    PathRejectedError,
    check_member_path,
    link_escapes,
    parent_through_link,
)

# -- check_member_path ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "normalized"), [
    ("a", "a"),
    ("a/b/c", "a/b/c"),
    ("./a", "a"),
    ("a//b/", "a/b"),
    ("a/./b/.", "a/b"),
    ("..a/b..", "..a/b.."),    # dots inside a name are just characters
    ("a b/ü ñ", "a b/ü ñ"),
    ("-rf", "-rf"),
])
def test_check_member_path_accepts_and_normalizes(name: str, normalized: str) -> None:
    assert check_member_path(name) == normalized


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"),
    ("a\x00b", "NUL"),
    ("/etc/passwd", "absolute"),
    ("//etc", "absolute"),
    ("..", "'..'"),
    ("../x", "'..'"),
    ("a/../../x", "'..'"),
    ("a/..", "'..'"),           # even when it would stay inside: never needed, refused
    ("a\\..\\..\\x", "backslash"),
    ("C:\\Windows", "backslash"),
    (".", "root"),
    ("./", "root"),
    ("././/.", "root"),
])
def test_check_member_path_refuses_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(PathRejectedError, match=reason):
        check_member_path(name)


@given(st.text(alphabet=["a", "b", "/", ".", "\\", "\x00", "é"], max_size=12))
def test_check_member_path_either_refuses_or_returns_a_safe_normal_form(name: str) -> None:
    try:
        result = check_member_path(name)
    except PathRejectedError:
        return
    parts = result.split("/")
    assert not result.startswith("/")
    assert all(p not in ("", ".", "..") for p in parts)
    assert "\\" not in result
    assert "\x00" not in result
    assert result == posixpath.normpath(name)
    assert check_member_path(result) == result


# -- link_escapes: cases ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "target", "links"), [
    ("l", "a", {}),
    ("l", "./a/b", {}),
    ("d/l", "../a", {}),
    ("d/e/l", "../../a", {}),
    ("d/l", "..", {}),                              # the tree root itself
    ("d/l", "x/../../y", {}),
    ("l", "d", {"d": "sub/deep"}),                  # chain staying inside
    ("l", "d/../x", {"d": "sub/deep"}),             # '..' applies after following d
    ("d/l", "x/../../..", {"d/x": "y/z"}),          # d/x -> d/y/z, three levels up: root
    ("l", "a", {"a": "b", "b": "c", "c": "file"}),
    ("l", "a/x", {"a": "."}),                       # a is the root, so this is just x
])
def test_link_staying_inside_the_tree(path: str, target: str, links: dict[str, str]) -> None:
    assert not link_escapes(path, target, {**links, path: target})


@pytest.mark.parametrize(("path", "target", "links"), [
    ("l", "/etc/passwd", {}),
    ("l", "/", {}),
    ("l", "", {}),
    ("l", "a\x00b", {}),
    ("l", "..", {}),
    ("l", "../x", {}),
    ("d/l", "../../x", {}),
    ("l", "a/../../x", {}),
    ("d/e/l", "../../../x", {}),
    ("l", "up", {"up": ".."}),                          # through a link that escapes
    ("l", "up/x", {"up": "../outside"}),
    ("l", "a", {"a": "b", "b": "../../x"}),             # escape two links away
    ("l", "abs", {"abs": "/tmp"}),                      # through an absolute link
    ("d/l", "x/../..", {"d/x": "."}),                   # d/x is d itself: two up escapes
    ("l", "l", {}),                                     # a link to itself: a loop
    ("l", "a", {"a": "b", "b": "a"}),                   # a two-link loop
])
def test_link_leaving_the_tree_or_looping(path: str, target: str,
                                          links: dict[str, str]) -> None:
    assert link_escapes(path, target, {**links, path: target})


def test_long_chain_within_the_kernel_limit_is_followed_and_a_longer_one_refused() -> None:
    def chain(n: int) -> dict[str, str]:
        table = {f"l{i}": f"l{i + 1}" for i in range(n)}
        table[f"l{n}"] = "file"
        return table

    assert not link_escapes("l0", "l1", chain(40))
    assert link_escapes("l0", "l1", chain(60))


def test_parent_through_link() -> None:
    links = {"a/b": "x", "c": "."}
    assert parent_through_link("a/b/f", links) == "a/b"
    assert parent_through_link("a/b/d/f", links) == "a/b"
    assert parent_through_link("c/f", links) == "c"
    assert parent_through_link("a/f", links) is None
    assert parent_through_link("a/b", links) is None   # the link itself is not a parent
    assert parent_through_link("cc/f", links) is None  # a prefix of a name is not a parent


# -- link_escapes: properties -------------------------------------------------------------

NAMES = ("a", "b", "c")
member_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
relative_targets = st.lists(st.sampled_from((*NAMES, "..", ".")), min_size=1,
                            max_size=6).map("/".join)
any_targets = st.one_of(relative_targets, st.sampled_from(("/", "/etc", "/tmp/x", "a//b")))


def lexically_escapes(path: str, target: str) -> bool:
    """Where the link leads if no name along the way were a link (an oracle by normpath)."""
    if target.startswith("/"):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return joined == ".." or joined.startswith("../")


@st.composite
def link_tables(draw: st.DrawFn) -> dict[str, str]:
    """Link tables a real tree can have: no link below another link."""
    candidates = draw(st.dictionaries(member_paths, any_targets, max_size=6))
    table: dict[str, str] = {}
    for path in sorted(candidates, key=lambda p: p.count("/")):
        if parent_through_link(path, table) is None:
            table[path] = candidates[path]
    return table


@given(member_paths, any_targets)
def test_without_other_links_escaping_is_exactly_lexical_escape(path: str, target: str) -> None:
    assert link_escapes(path, target, {}) == lexically_escapes(path, target)


@given(link_tables(), st.sampled_from(["w", "w/x", "w/x/y"]))
def test_a_link_into_an_escaping_link_escapes_too(table: dict[str, str], where: str) -> None:
    # `where` is a new link in directories no other link touches ("w" is not a name
    # the tables use); its target is the plain path to an escaping link.
    escaping = [p for p, t in table.items() if link_escapes(p, t, table)]
    assume(escaping)
    for bad in escaping:
        target = posixpath.relpath(bad, posixpath.dirname(where) or ".")
        with_new = {**table, where: target}
        assert link_escapes(where, target, with_new), (where, target, table)


@settings(max_examples=100, deadline=None)
@given(link_tables())
def test_a_link_called_safe_stays_inside_the_tree_on_a_real_file_system(
        table: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as sandbox:
        tree = Path(os.path.realpath(sandbox)) / "tree"
        tree.mkdir()
        for path, target in table.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, tree / path)
        for path, target in table.items():
            landed = os.path.realpath(tree / path)
            inside = landed == str(tree) or landed.startswith(f"{tree}/")
            if not link_escapes(path, target, table):
                assert inside, (path, target, table, landed)
            elif inside:
                # Called escaping but realpath stays inside: only for a loop, which the
                # kernel refuses too (ELOOP) and realpath reports as the unresolved path.
                with pytest.raises(OSError):  # noqa: PT011, PT012 - ELOOP or ENOENT
                    os.stat(tree / path)
                    os.path.realpath(tree / path, strict=True)
