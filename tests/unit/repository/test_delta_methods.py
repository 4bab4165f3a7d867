"""Which patch methods deltas may use, and how a device learns what a delta needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fleetup._delta import DELTA_FORMAT, applicable
from fleetup._facts import DeltaFacts
from fleetup.repository import FileRepository, RepoConfig, RepoLayout, init_repo
from tests.unit.repository.conftest import Publish


def _delta_facts(repo: Path) -> list[DeltaFacts]:
    layout = RepoLayout(repo)
    targets = FileRepository(layout, RepoConfig.load(layout.config)).targets()
    return [DeltaFacts.from_custom(t.custom, p) for p, t in targets.targets.items()
            if "/deltas/" in p]


def test_a_default_repository_may_use_every_method_and_says_which_a_delta_needs(
        repo: Path, publish: Publish) -> None:
    publish("1.0.0")
    publish("1.1.0")
    deltas = _delta_facts(repo)
    assert deltas, "no delta was published"
    assert all(set(d.requires) <= {"hdiff"} for d in deltas)
    settings = json.loads((repo / "fleetup-repo.json").read_text())
    assert settings["delta_methods"] == ["lit", "zdict", "bsdiff", "hdiff"]


def test_a_delta_that_needs_hdiffpatch_says_so(tmp_path: Path, publish: Publish,
                                               repo: Path) -> None:
    pytest.importorskip("hdiffpatch")
    # Re-create the fixture's repository allowing hdiff: binary-heavy releases use it.
    shutil.rmtree(repo)
    init_repo(repo, delta_methods=("lit", "zdict", "bsdiff", "hdiff"))
    publish("1.0.0", payload_size=2 << 20)
    publish("1.1.0", payload_size=2 << 20)
    for delta in _delta_facts(repo):
        assert set(delta.requires) <= {"hdiff"}
        custom = delta.to_custom()["fleetup"]
        assert ("requires" in custom) == bool(delta.requires)


def test_a_device_applies_only_deltas_of_its_format_and_methods() -> None:
    assert applicable(DELTA_FORMAT, [])
    assert not applicable("fleetup-delta/1", [])
    assert not applicable(DELTA_FORMAT, ["teleport"])


def test_delta_facts_round_trip_what_they_require() -> None:
    facts = DeltaFacts("app", "linux-x86_64", "1.0", "1.1", "app/linux-x86_64/app-1.1.tar.zst",
                       DELTA_FORMAT, ("hdiff",))
    assert DeltaFacts.from_custom(facts.to_custom()) == facts


def test_no_delta_is_made_from_a_release_that_shares_nothing(repo: Path, tmp_path: Path) -> None:
    import os

    from fleetup.repository import ReleaseRequest, add_release
    from tests.unit.repository.conftest import PLATFORM

    trees = []
    for version in ("1.0.0", "2.0.0"):
        src = tmp_path / f"unrelated-{version}"
        (src / "lib").mkdir(parents=True)
        for i in range(20):  # same names, unrelated (random) contents
            (src / "lib" / f"part{i}.bin").write_bytes(os.urandom(40_000))
        trees.append(src)
    add_release(repo, ReleaseRequest(trees[0], "hello", "1.0.0", PLATFORM))
    added = add_release(repo, ReleaseRequest(trees[1], "hello", "2.0.0", PLATFORM))
    assert added.deltas == {}
    assert "1.0.0" in added.skipped_deltas
    assert _delta_facts(repo) == []
