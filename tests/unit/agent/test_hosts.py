"""[download] require_https and allowed_hosts: the pure rule, the config's own URLs at
load, and every request of the fetcher (redirect hops too) and the fleet client."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from fleetup.agent._config import AgentConfig, load_config
from fleetup.agent._fetcher import FetchSettings, HttpxFetcher
from fleetup.agent._fleet import FleetClient
from fleetup.agent._hosts import HostPolicy, HostRefusedError
from fleetup.agent._store import DeviceStore
from fleetup.errors import ConfigError

ALLOW = HostPolicy(allowed_hosts=frozenset({"updates.example.com", "*.cdn.example"}))


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://updates.example.com/metadata/root.json", True),
    ("https://UPDATES.example.com./x", True),
    ("https://a.b.cdn.example/targets/x", True),
    ("https://cdn.example/x", False),            # *.domain is below it, not itself
    ("https://evil-cdn.example/x", False),
    ("https://updates.example.com.evil.example/x", False),
    ("https://evil.example/?next=updates.example.com", False),
    ("https://updates.example.com@evil.example/x", False),
    ("not a url", False),
])
def test_allowed_hosts_match_names_and_subdomain_wildcards(url: str, allowed: bool) -> None:
    assert (ALLOW.refusal(url) is None) is allowed


def test_an_empty_policy_refuses_nothing() -> None:
    assert not HostPolicy().active
    assert HostPolicy().refusal("http://anything.example/x") is None


def test_require_https_refuses_plaintext_schemes_and_names_the_host() -> None:
    policy = HostPolicy(require_https=True)
    assert policy.refusal("https://h.example/") is None
    assert policy.refusal("tls://nats.example:4222") is None
    why = policy.refusal("http://evil.example/metadata/1.root.json")
    assert why is not None
    assert "http://evil.example/metadata/1.root.json" in why
    assert "require_https" in why
    assert policy.refusal("nats://nats.example:4222") is not None


def test_the_refusal_names_the_host_in_one_bounded_line() -> None:
    with pytest.raises(HostRefusedError) as caught:
        ALLOW.check("http://evil.example/" + "a" * 5000 + "\n")
    message = str(caught.value)
    assert "host evil.example is not in [download] allowed_hosts" in message
    assert "\n" not in message
    assert len(message) < 300


CONFIG = """\
app = "hello"
root = "/opt/hello"
trusted_root = "/etc/root.json"
{urls}
[download]
{download}
{tail}
"""


FLEET = 'server_url = "https://fleet.example/"\nenrollment_token = "t"'


def _load(tmp_path: Path, urls: str, download: str, tail: str = "") -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(urls=urls, download=download, tail=tail))
    return load_config(path)


@pytest.mark.parametrize(("urls", "download", "tail", "named"), [
    ('repo_url = "http://repo.example/"', "require_https = true", "", "repo_url"),
    (FLEET, 'allowed_hosts = ["repo.example"]', "", "server_url"),
    (FLEET, "require_https = true", '[push]\nurl = "nats://fleet.example:4222"', "push.url"),
])
def test_config_urls_that_break_the_policy_are_refused_at_load(
        tmp_path: Path, urls: str, download: str, tail: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, urls, download, tail)
    assert f"{named}: refusing" in str(caught.value)
    assert "example" in str(caught.value)


def test_allowed_hosts_must_be_host_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a host name"):
        _load(tmp_path, 'repo_url = "https://r.example/"',
              'allowed_hosts = ["https://r.example/"]')


def test_a_config_within_its_policy_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, 'repo_url = "https://R.example/"',
                   'require_https = true\nallowed_hosts = ["r.example"]')
    assert config.download.hosts == HostPolicy(True, frozenset({"r.example"}))


def test_the_fetcher_checks_every_redirect_hop_before_sending_it() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        if request.url.host == "repo.example":
            return httpx.Response(302, headers={"Location": "http://evil.example/x"})
        return httpx.Response(200, content=b"data")

    settings = FetchSettings(
        url_check=HostPolicy(allowed_hosts=frozenset({"repo.example"})).check)
    with HttpxFetcher(settings, transport=httpx.MockTransport(handler)) as fetcher, \
            pytest.raises(HostRefusedError, match=r"host evil\.example is not"):
        fetcher.download_bytes("http://repo.example/metadata/timestamp.json", 100)
    assert sent == ["http://repo.example/metadata/timestamp.json"]  # evil never asked


def test_the_fleet_client_checks_each_request(tmp_path: Path) -> None:
    config = _load(tmp_path, FLEET, "")
    # A policy that the server URL breaks (the config load would refuse it): the
    # client's own check still stops the request before it is sent.
    config = dataclasses.replace(config, root=tmp_path / "device", download=dataclasses.replace(
        config.download, allowed_hosts=frozenset({"other.example"})))
    sent: list[httpx.Request] = []
    client = FleetClient(config, DeviceStore(config.root),
                         httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)))
    with pytest.raises(HostRefusedError, match=r"host fleet\.example"):
        client.enroll()
    assert sent == []
