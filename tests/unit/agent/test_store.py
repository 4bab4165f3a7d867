"""DeviceStore: the one place that reads and writes the agent's on-device state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetup._facts import ReleaseFacts
from fleetup._manifest import scan_tree
from fleetup._versions import UpdateType
from fleetup.agent._lifecycle import Journal, Kind, State
from fleetup.agent._store import DeviceStore
from fleetup.errors import StateError
from tests.support.trees import make_tree


@pytest.fixture
def store(tmp_path: Path) -> DeviceStore:
    return DeviceStore(tmp_path / "device")


def facts_for(version: str, digest: str) -> ReleaseFacts:
    return ReleaseFacts(app="hello", version=version, platform="linux-x86_64",
                        channels=("stable",), update_type=UpdateType.MINOR, tree_digest=digest,
                        tree_size=1, tree_entries=1, published="2024-01-01T00:00:00+00:00")


def install(store: DeviceStore, version: str) -> None:
    """A kept release as the agent leaves it: the tree and its verified manifest."""
    store.ensure()
    tree = make_tree(store.layout.release_dir(version), {"VERSION": version})
    manifest = scan_tree(tree)
    store.save_manifest(version, manifest, facts_for(version, manifest.digest()))


def test_ensure_makes_the_layout_and_leaves_data_alone(store: DeviceStore) -> None:
    store.layout.data.mkdir(parents=True)
    (store.layout.data / "db.sqlite").write_bytes(b"precious")
    store.ensure()
    for path in (store.layout.releases, store.layout.tuf, store.layout.downloads,
                 store.layout.manifests, store.layout.logs):
        assert path.is_dir()
    assert (store.layout.state.stat().st_mode & 0o777) == 0o700
    assert [p.name for p in store.layout.data.iterdir()] == ["db.sqlite"]
    assert (store.layout.data / "db.sqlite").read_bytes() == b"precious"


def test_journal_round_trip_and_an_idle_default(store: DeviceStore) -> None:
    assert store.load_journal() == Journal()
    store.ensure()
    journal = Journal(state=State.STAGED, kind=Kind.UPDATE, target="1.1", installed="1.0")
    store.save_journal(journal)
    assert store.load_journal() == journal
    assert (store.layout.state / "journal.json").stat().st_mode & 0o777 == 0o600


def test_a_corrupt_journal_is_a_state_error(store: DeviceStore) -> None:
    store.ensure()
    (store.layout.state / "journal.json").write_bytes(b'{"state": "staged"')
    with pytest.raises(StateError, match="journal is corrupt"):
        store.load_journal()


def test_history_appends_reads_back_and_tolerates_a_torn_line(store: DeviceStore) -> None:
    assert store.history() == []
    store.ensure()
    store.append_history({"update_id": "a", "result": "committed", "to": "1.0"})
    store.append_history({"update_id": "b", "result": "rolled-back", "to": "1.0"})
    with (store.layout.state / "history.jsonl").open("ab") as f:
        f.write(b'{"update_id": "c", "resu')  # a power cut in the middle of a line
    assert [r["update_id"] for r in store.history()] == ["a", "b"]


def test_history_lists_a_record_written_twice_once(store: DeviceStore) -> None:
    # A handler killed after writing history runs again on resume and writes it again.
    store.ensure()
    record = {"update_id": "a", "result": "committed", "to": "1.1"}
    store.append_history(record)
    store.append_history(record)
    store.append_history({"update_id": "a", "result": "rolled-back", "to": "1.0"})
    assert [(r["update_id"], r["result"]) for r in store.history()] == [
        ("a", "committed"), ("a", "rolled-back")]


def test_failed_set(store: DeviceStore) -> None:
    store.ensure()
    assert store.failed() == {}
    store.mark_failed("1.1", "health command exited 3")
    store.mark_failed("1.2", "crash loop")
    assert store.failed() == {"1.1": "health command exited 3", "1.2": "crash loop"}
    store.clear_failed("1.1")
    store.clear_failed("9.9")  # not there: nothing happens
    assert DeviceStore(store.layout.root).failed() == {"1.2": "crash loop"}


def test_corrupt_state_files_are_state_errors(store: DeviceStore) -> None:
    store.ensure()
    (store.layout.state / "failed.json").write_text("{oops")
    with pytest.raises(StateError, match=r"failed.json is corrupt"):
        store.failed()
    (store.layout.state / "status.json").write_text("[1,")
    with pytest.raises(StateError, match=r"status.json is corrupt"):
        store.load_status()


def test_device_id_is_made_once_and_kept(store: DeviceStore) -> None:
    first = store.device_id()
    assert len(first) == 32
    int(first, 16)
    assert store.device_id() == first
    assert DeviceStore(store.layout.root).device_id() == first
    assert DeviceStore(store.layout.root.parent / "other").device_id() != first


def test_status_round_trip(store: DeviceStore) -> None:
    store.ensure()
    assert store.load_status() == {}
    store.save_status({"last_check": "now", "pending": None})
    assert store.load_status() == {"last_check": "now", "pending": None}


def test_installed_version_follows_current(store: DeviceStore) -> None:
    assert store.installed_version() is None
    install(store, "1.0")
    install(store, "1.1")
    store.point_current("1.0")
    assert store.installed_version() == "1.0"
    assert os.readlink(store.layout.current) == "releases/1.0"
    store.point_current("1.1")
    assert store.installed_version() == "1.1"
    assert (store.layout.current / "VERSION").read_text() == "1.1"
    store.point_current(None)
    assert store.installed_version() is None
    assert not store.layout.current.is_symlink()
    store.point_current(None)  # twice is fine


def test_current_pointing_outside_releases_is_a_state_error(store: DeviceStore) -> None:
    store.ensure()
    os.symlink("/etc", store.layout.current)
    with pytest.raises(StateError, match="points outside releases/"):
        store.installed_version()


def test_kept_versions_are_complete_trees_in_pep440_order(store: DeviceStore) -> None:
    for version in ("1.10", "1.9", "1.2", "2.0rc1"):
        install(store, version)
    store.layout.partial_dir("3.0").mkdir()          # an interrupted staging
    store.layout.release_dir("2.5").mkdir()          # a tree without a verified manifest
    assert store.kept_versions() == ["1.2", "1.9", "1.10", "2.0rc1"]


def test_manifests(store: DeviceStore) -> None:
    install(store, "1.0")
    manifest, facts = store.load_manifest("1.0")
    assert manifest == scan_tree(store.layout.release_dir("1.0"))
    assert facts.version == "1.0"
    assert facts.tree_digest == manifest.digest()
    store.forget_manifest("1.0")
    store.forget_manifest("1.0")
    with pytest.raises(StateError, match=r"no verified manifest for installed 1.0"):
        store.load_manifest("1.0")
    (store.layout.manifests / "1.1.json").write_text(json.dumps({"facts": {}}))
    with pytest.raises(StateError, match=r"manifest of 1.1 is corrupt"):
        store.load_manifest("1.1")


def test_the_lock_is_reentrant_in_one_store(store: DeviceStore) -> None:
    with store.lock(), store.lock():
        pass
    with store.lock():  # released and taken again
        pass


def test_the_lock_excludes_a_second_store_on_the_same_root(store: DeviceStore) -> None:
    other = DeviceStore(store.layout.root)
    with store.lock(), pytest.raises(StateError, match="another fleetup agent"), other.lock():
        pass
    with other.lock():  # free again once the first is released
        pass


def test_the_lock_excludes_another_process(store: DeviceStore) -> None:
    holder = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fleetup.agent._store import DeviceStore\n"
        "with DeviceStore(Path(sys.argv[1])).lock():\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(store.layout.root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        with pytest.raises(StateError, match="another fleetup agent"), store.lock():
            pass
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    with store.lock():
        pass
