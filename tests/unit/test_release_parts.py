"""Which targets make up a release (``_release_parts``): what a per-release push sends
and what makes a release installable on a fleet server."""

from __future__ import annotations

from fleetup._release_parts import release_parts, shared_targets, version_parts

R10, R11 = "hello/p/hello-1.0.tar.zst", "hello/p/hello-1.1.tar.zst"
D = "hello/p/deltas/hello-1.0_to_1.1.fdelta"
CUSTOMS = {
    R10: {"fleetup": {"kind": "release", "app": "hello", "version": "1.0"}},
    R11: {"fleetup": {"kind": "release", "app": "hello", "version": "1.1"}},
    D: {"fleetup": {"kind": "delta", "release": R11}},
    "hello/p/index.json": {"fleetup": {"kind": "index"}},
    "other/p/deltas/x.fdelta": {"fleetup": {"kind": "delta", "release": "gone"}},
    "plain.txt": None,
}


def test_a_release_is_its_archive_and_the_deltas_that_produce_it() -> None:
    assert release_parts(CUSTOMS) == {R10: [R10], R11: [R11, D]}


def test_shared_targets_belong_to_no_release() -> None:
    assert shared_targets(CUSTOMS) == ["hello/p/index.json", "plain.txt"]


def test_version_parts_pick_one_version_of_one_app() -> None:
    assert version_parts(CUSTOMS, "hello", lambda v: v == "1.1") == [R11, D]
    assert version_parts(CUSTOMS, "other", lambda v: True) == []
