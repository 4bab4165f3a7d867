"""Push's pure parts: subjects, messages, what a server publishes, the agent's config."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetup._push import decode, encode, subject
from fleetup.agent._config import AgentConfig, load_config
from fleetup.agent._push import PushListener
from fleetup.errors import ConfigError
from fleetup.server._push import push_changes, push_state
from fleetup.server._rollouts import Offer, RolloutPlan, RolloutState

PLATFORMS = frozenset({"linux-x86_64"})


def offer(rollout_id: int = 1, state: RolloutState = RolloutState.ACTIVE, stage: int = 0,
          channel: str = "stable", rollback: bool = False) -> Offer:
    plan = RolloutPlan(id=rollout_id, app="hello", version="1.1", channel=channel,
                       stages=(10.0, 50.0, 100.0), stage_index=stage,
                       stage_started_at=datetime(2026, 1, 1, tzinfo=UTC),
                       soak=timedelta(hours=1), min_reports=5, max_failure_rate=0.1,
                       state=state, rollback=rollback)
    return Offer(plan, PLATFORMS)


def test_subjects_keep_names_with_dots_apart() -> None:
    assert subject("hello", "stable") == "fleetup.check.hello.stable"
    assert subject("my.app", "beta") == "fleetup.check.my~app.beta"
    assert subject("my", "app.beta") != subject("my.app", "beta")


def test_messages_round_trip_and_junk_reads_as_nothing() -> None:
    assert decode(encode("hello", "stable", "why")) == {"app": "hello", "channel": "stable",
                                                         "reason": "why"}
    for junk in (b"", b"\xff", b"[1]", b"null"):
        assert decode(junk) == {}


@pytest.mark.parametrize(("before", "after", "pushed"), [
    ([], [offer()], True),  # a rollout starts
    ([offer()], [offer(stage=1)], True),  # it advances
    ([offer()], [offer()], False),  # nothing changed
    ([offer()], [offer(state=RolloutState.PAUSED)], False),  # paused: nothing new to do
    ([offer(state=RolloutState.PAUSED)], [offer()], True),  # resumed
    ([offer(stage=2)], [offer(stage=2, state=RolloutState.COMPLETED)], False),
    ([offer()], [offer(state=RolloutState.ABORTED, rollback=True)], True),  # roll back
    ([offer()], [offer(state=RolloutState.ABORTED)], False),  # aborted, devices keep it
])
def test_what_is_pushed(before: list[Offer], after: list[Offer], pushed: bool) -> None:
    changes = push_changes(push_state({"hello": before}), push_state({"hello": after}))
    assert bool(changes) == pushed
    if pushed:
        assert [c[:2] for c in changes] == [("hello", "stable")]


def test_each_channel_is_pushed_on_its_own() -> None:
    before = push_state({"hello": [offer(1, channel="stable")]})
    after = push_state({"hello": [offer(1, channel="stable"), offer(2, channel="beta")],
                        "other": [offer(3)]})
    assert push_changes(before, after) == [
        ("hello", "beta", "rollout 2 active at stage 1"),
        ("other", "stable", "rollout 3 active at stage 1")]


def _config(tmp_path: Path, body: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'app = "hello"\nroot = "r"\ntrusted_root = "t"\n{body}')
    return load_config(path)


def test_push_config(tmp_path: Path) -> None:
    fleet = 'server_url = "http://s/"\n'
    assert _config(tmp_path, fleet).push.url is None
    config = _config(tmp_path, fleet + '[push]\nurl = "nats://n:4222"\njitter = 2.5\n')
    assert (config.push.url, config.push.jitter) == ("nats://n:4222", 2.5)
    with pytest.raises(ConfigError, match=r"push\.url needs fleet mode"):
        _config(tmp_path, 'repo_url = "http://r/"\n[push]\nurl = "nats://n:4222"\n')
    with pytest.raises(ConfigError, match="must be a NATS URL"):
        _config(tmp_path, fleet + '[push]\nurl = "http://n"\n')
    with pytest.raises(ConfigError, match="cannot be negative"):
        _config(tmp_path, fleet + '[push]\nurl = "nats://n"\njitter = -1\n')
    with pytest.raises(ConfigError, match=r"push\.nope"):
        _config(tmp_path, fleet + '[push]\nnope = 1\n')


def test_a_message_asks_for_a_check_within_the_jitter(tmp_path: Path) -> None:
    config = _config(tmp_path, 'server_url = "http://s/"\n[push]\nurl = "nats://n"\n'
                               'jitter = 4\n')
    asked: list[float] = []
    listener = PushListener(config, asked.append, rng=random.Random(1))
    for _ in range(50):
        listener.heard(encode("hello", "stable", "rollout 1 active at stage 1"))
    listener.heard(b"not json")  # a stranger's message still only asks for a check
    assert len(asked) == 51
    assert all(0.0 <= s <= 4.0 for s in asked)
    assert max(asked) - min(asked) > 1.0  # spread, not all at once
    assert listener.subject == "fleetup.check.hello.stable"
