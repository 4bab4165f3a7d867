"""A stolen fleet server against a real fleet-mode agent (issue 12 §4).

The attacker runs the fleet server: it holds the signed repository and the online keys,
and answers check-ins as it likes. It may delay updates; it must not make a device
install what the publisher's signature rules out for it (another channel, a ``min_from``
it does not meet), push what the device's own policy holds back, or hang the agent
with a reply that never ends or never stops growing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetup.agent import Agent, build_agent, load_config
from fleetup.errors import NetworkError, ServerAPIError
from fleetup.repository import ReleaseRequest, add_release, init_repo
from tests.security._table import Attack, attack, rows, run_row
from tests.support.hostile_fleet import HostileFleet, hostile_fleet

ATTACKS: list[Attack] = []
PLATFORM = "linux-x86_64"


@pytest.fixture(scope="module")
def signed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.0.0 (stable), 1.1.0 (beta only), 1.2.0 (min_from 1.1.0), 2.0.0 (a major)."""
    repo = tmp_path_factory.mktemp("stolen-server") / "repo"
    init_repo(repo)
    for version, channels, min_from in [("1.0.0", ("stable",), None),
                                        ("1.1.0", ("beta",), None),
                                        ("1.2.0", ("stable",), "1.1.0"),
                                        ("2.0.0", ("stable",), None)]:
        src = repo.parent / f"src-{version}"
        src.mkdir()
        (src / "VERSION").write_text(version)
        add_release(repo, ReleaseRequest(src=src, app="hello", version=version,
                                         platform=PLATFORM, channels=channels,
                                         min_from=min_from))
    return repo


@dataclass
class Stolen:
    fleet: HostileFleet
    agent: Callable[[str], Agent]   # an agent for this device, with extra config text


@pytest.fixture
def stolen(signed_repo: Path, tmp_path: Path) -> Iterator[Stolen]:
    """A stable device that the stolen server first gave 1.0.0 (its first install)."""
    public = signed_repo / "public"
    with hostile_fleet(public) as fleet:
        def agent(extra: str = "") -> Agent:
            config = tmp_path / "agent.toml"
            config.write_text(f"""app = "hello"
root = "{tmp_path / 'device'}"
server_url = "{fleet.url}"
enrollment_token = "fleet-wide"
trusted_root = "{public / 'metadata' / '1.root.json'}"
device_id = "device-1"
platform = "{PLATFORM}"
[health]
startup_grace = 0.0
[download]
retries = 1
backoff = 0.05
{extra}
""")
            return build_agent(load_config(config))

        fleet.answer = {"action": "install", "version": "1.0.0"}
        agent().update()
        fleet.answer = {"action": "none"}
        yield Stolen(fleet, agent)


def _refused(stolen: Stolen, version: str, why: str) -> None:
    stolen.fleet.answer = {"action": "install", "version": version}
    agent = stolen.agent("")
    outcome = agent.update()
    assert agent.store.installed_version() == "1.0.0", outcome
    assert why in outcome.reason
    assert version not in agent.store.kept_versions()


@attack(ATTACKS, "fleet-agent.release-of-another-channel", attacker="stolen-server",
        refusal="a release signed for beta only is not installed on a stable device")
def _other_channel(stolen: Stolen) -> None:
    _refused(stolen, "1.1.0", "signed for beta only")
    refusals = [e for e in stolen.fleet.events if e["type"] == "error"]
    assert refusals
    assert "signed for beta only" in refusals[-1]["reason"]


@attack(ATTACKS, "fleet-agent.min-from-not-met", attacker="stolen-server",
        refusal="a release whose signed min_from the device does not meet is refused")
def _min_from(stolen: Stolen) -> None:
    _refused(stolen, "1.2.0", "needs 1.1.0 or later installed first")


@attack(ATTACKS, "fleet-agent.major-past-local-policy", attacker="stolen-server",
        refusal="a major the device's policy holds back waits (unless "
                "[policy] server_override = true)")
def _major(stolen: Stolen) -> None:
    _refused(stolen, "2.0.0", "major updates install only on request")
    assert stolen.agent("").check().decision == "defer"


@attack(ATTACKS, "fleet-agent.trickled-reply", attacker="stolen-server",
        refusal="a reply trickled a byte at a time ends at [fleet] deadline with one "
                "network error")
def _trickle(stolen: Stolen) -> None:
    stolen.fleet.reply = "trickle"
    agent = stolen.agent("[fleet]\ndeadline = 1.0\n")
    with pytest.raises(NetworkError, match=r"no whole answer .* within 1 s"):
        agent.check()


@attack(ATTACKS, "fleet-agent.endless-reply", attacker="stolen-server",
        refusal="a reply past [fleet] max_reply is refused without being read further")
def _flood(stolen: Stolen) -> None:
    stolen.fleet.reply = "flood"
    agent = stolen.agent(f"[fleet]\nmax_reply = {1 << 20}\n")
    with pytest.raises(ServerAPIError, match="larger than 1048576 bytes"):
        agent.check()
    assert stolen.fleet.sent < stolen.fleet.flood // 4  # the agent hung up early


@rows(ATTACKS)
def test_attack(row: Attack, request: pytest.FixtureRequest) -> None:
    run_row(row, request)
