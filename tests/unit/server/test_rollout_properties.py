"""Property test (issue 11 §1): random rollouts, groups, aborts, resumes and check-ins
against the real decision code (``Fleet.checkin``, the offers it records, the caches it
loads, the operators' changes) on SQLite.

Whatever the sequence, no device outside a rollout's targets gets its install order,
no device the rollout did not offer its release to gets its rollback order, and once
the operators stop, every device converges: a few rounds later nobody is told to do
anything (no install/rollback loop). Devices are pinned and unpinned at random too: a
pinned device never gets a rollout's order, only "run the pinned version".
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from fleetup.errors import ServerAPIError
from fleetup.server._device_actions import pin_device, unpin_device
from fleetup.server._fleet import DeviceEntry, Fleet
from fleetup.server._models import Base, Channel, Device, Release, Rollout, RolloutOffer
from fleetup.server._operations import change_rollout, start_rollout
from fleetup.server._rollouts import matches_group
from fleetup.server._schemas import CheckinRequest, RolloutAbort, RolloutCreate
from fleetup.server._settings import Settings

PLATFORM = "linux-x86_64"
VERSIONS = ("1.1", "1.2")
GROUPS = ({}, {"site": "lab"}, {"site": "field"})


@dataclass
class World:
    fleet: Fleet
    devices: dict[str, str | None] = field(default_factory=dict)  # id -> version
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def session(self) -> Session:
        return self.fleet.sessions()

    def sync(self) -> None:
        """What the background tasks do: write the buffers, reload the caches."""
        fleet = self.fleet
        rows, offers = list(fleet.pending.values()), list(fleet.pending_offers.values())
        fleet.pending, fleet.pending_offers = {}, {}
        fleet._write_checkins(rows, offers)
        fleet.offers = fleet._load_caches()[0]

    def round(self) -> list[tuple[str, str, int | None, str | None]]:
        """Every device checks in once and does what it is told; the orders given."""
        orders = []
        with self.session() as session:
            entries = {d.id: DeviceEntry.of(d) for d in session.scalars(select(Device))}
        for device_id, version in self.devices.items():
            entry = entries[device_id]
            entry.version = version
            answer = self.fleet.checkin(entry, CheckinRequest(
                device_id=device_id, app="hello", platform=PLATFORM,
                tags=self.tags[device_id], version=version,
                kept=[version] if version else []))
            if entry.pinned is not None:
                assert answer.rollout_id is None, f"pinned {device_id} got {answer}"
                assert answer.version in (None, entry.pinned), (device_id, answer)
            elif answer.action != "none":
                self.check_order(device_id, answer.action, answer.rollout_id)
                orders.append((device_id, answer.action, answer.rollout_id, answer.version))
                self.devices[device_id] = answer.version
        self.sync()
        return orders

    def check_order(self, device_id: str, action: str, rollout_id: int | None) -> None:
        with self.session() as session:
            row = session.get(Rollout, rollout_id)
            assert row is not None, (device_id, action)
            assert matches_group(self.tags[device_id], row.group_filter or {}), (
                f"{device_id} {self.tags[device_id]} got {action} of rollout {row.id} for "
                f"group {row.group_filter}")
            if action == "rollback":
                offered = session.get(RolloutOffer, (row.id, device_id))
                assert offered is not None, f"rollback of {device_id}, never offered {row.id}"


def make_world(directory: Path, tags: list[dict[str, str]]) -> World:
    engine = create_engine(f"sqlite:///{directory / 'fleetup.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Channel(name="stable"))
        for number, version in enumerate(("1.0", *VERSIONS)):
            session.add(Release(app="hello", version=version, platform=PLATFORM,
                                target_path=f"hello/{PLATFORM}/hello-{version}.tar.zst",
                                length=1, sha256="0" * 64, channels=["stable"],
                                update_type="minor", targets_version=number + 1))
        for number, device_tags in enumerate(tags):
            session.add(Device(id=f"dev-{number}", app="hello", platform=PLATFORM,
                               channel="stable", tags=device_tags, version="1.0",
                               token_hash=f"{number:064d}"))
        session.commit()
    world = World(Fleet(Settings(data_dir=directory), engine),
                  {f"dev-{n}": "1.0" for n in range(len(tags))},
                  {f"dev-{n}": t for n, t in enumerate(tags)})
    world.sync()
    return world


def operate(world: World, op: tuple[str, int, int]) -> None:
    kind, a, b = op
    with world.session() as session:
        try:
            if kind in ("pin", "unpin"):
                device_id = f"dev-{b % len(world.devices)}"
                if kind == "pin":
                    pin_device(session, device_id=device_id, version=("1.0", *VERSIONS)[a % 3],
                               actor="test")
                else:
                    unpin_device(session, device_id=device_id, actor="test")
                session.commit()
            elif kind == "start":
                spec = RolloutCreate(app="hello", version=VERSIONS[a // 2], stages=[
                    [100.0], [50.0, 100.0]][a % 2], group=GROUPS[b])
                start_rollout(session, spec=spec, actor="test")
            else:
                ids = list(session.scalars(select(Rollout.id).order_by(Rollout.id.desc())))
                if not ids:
                    return
                change_rollout(session, rollout_id=ids[a % len(ids) if a == 3 else 0],
                               action=kind, actor="test", abort=RolloutAbort(rollback=b > 0))
        except ServerAPIError:
            return  # refused (a conflict, a state that forbids it): nothing changed
    world.sync()


# (what, a, b): start 1.1 (a < 2) or 1.2 in one stage or two (a % 2) for group b; the
# changes act on the newest rollout (on another when a == 3); an abort rolls back if b;
# pin device b to 1.0, 1.1 or 1.2 (a % 3), or unpin it.
ops = st.lists(st.tuples(st.sampled_from(["start", "start", "abort", "abort", "pause",
                                          "resume", "advance", "checkin", "checkin",
                                          "pin", "unpin"]),
                         st.integers(0, 3), st.integers(0, 2)), max_size=12)
# The reproduction of issue 11 §1: a lab rollout aborted with rollback, then 1.1 to all.
ISSUE = [("start", 0, 1), ("checkin", 0, 0), ("abort", 0, 1), ("checkin", 0, 0),
         ("start", 0, 0), ("checkin", 0, 0)]
# A pinned device under a rollout to all, then unpinned.
PINNED = [("pin", 0, 0), ("start", 0, 0), ("checkin", 0, 0), ("pin", 1, 1), ("checkin", 0, 0),
          ("unpin", 0, 0), ("checkin", 0, 0)]
fleets = st.lists(st.sampled_from(GROUPS[1:]), min_size=2, max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tags=fleets, script=ops)
@example(tags=[GROUPS[1]] * 3 + [GROUPS[2]] * 3, script=ISSUE)
@example(tags=[GROUPS[1]] * 3, script=PINNED)
def test_orders_stay_in_their_rollout_and_devices_converge(tags: list[dict[str, str]],
                                                            script: list[tuple[str, int, int]]
                                                            ) -> None:
    with tempfile.TemporaryDirectory() as directory:
        world = make_world(Path(directory), tags)
        try:
            for op in script:
                if op[0] == "checkin":
                    world.round()
                else:
                    operate(world, op)
            # The operators stop: within a few rounds nobody is told anything.
            for _ in range(4):
                if not world.round():
                    break
            assert world.round() == [], "devices keep being told to install or roll back"
        finally:
            world.fleet.engine.dispose()
