"""AGENT.toml: defaults, every section, paths, and one-line errors that name the key."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from fleetup._facts import default_platform
from fleetup._versions import UpdateType
from fleetup.agent._config import (
    AgentConfig,
    DownloadConfig,
    HealthConfig,
    MaintenanceWindow,
    ModulesConfig,
    PolicyConfig,
    ProcessConfig,
    StatusApiConfig,
    load_config,
)
from fleetup.errors import ConfigError

MINIMAL = """\
app = "hello"
root = "/opt/hello"
repo_url = "http://127.0.0.1:8080"
trusted_root = "/etc/fleetup/root.json"
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") or str(path) in message
    return message


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(path)
    assert config == AgentConfig(
        app="hello", root=Path("/opt/hello"), trusted_root=Path("/etc/fleetup/root.json"),
        repo_url="http://127.0.0.1:8080/", source=path)
    assert config.channel == "stable"
    assert config.platform == default_platform()
    assert (config.keep, config.poll_interval, config.poll_jitter) == (3, 3600.0, 0.1)
    assert config.device_id is None
    assert config.server_url is None
    assert not config.fleet_mode
    assert config.policy == PolicyConfig()
    assert config.policy.auto == {UpdateType.PATCH, UpdateType.MINOR, UpdateType.SECURITY,
                                  UpdateType.HOTFIX}
    assert config.policy.window is None
    assert config.download == DownloadConfig()
    assert config.download.deltas
    assert config.process == ProcessConfig()
    assert config.health == HealthConfig()
    assert config.modules == ModulesConfig()
    assert config.modules.enabled
    assert config.status_api == StatusApiConfig()
    assert not config.status_api.enabled
    assert (config.log_json, config.log_level) == (False, "INFO")


def test_every_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + """\
channel = "beta"
platform = "linux-aarch64"
device_id = "dev-7"
keep = 5
poll_interval = 60
poll_jitter = 0.5
server_url = "https://fleet.example/"
enrollment_token = "tok"
tags = {site = "lab", rack = "3"}

[policy]
auto = ["patch", "security"]
window = "22:00-04:00"
window_exempt = ["hotfix"]

[download]
timeout = 5
deadline = 100.5
retries = 2
backoff = 0.5
max_backoff = 4
bandwidth = 1000
deltas = false

[process]
command = ["./bin/app", "--serve"]
restart_command = ["systemctl", "restart", "hello"]
env = {MODE = "prod"}
stop_timeout = 3

[health]
command = ["./check", "-q"]
url = "http://127.0.0.1:9000/health"
timeout = 12
startup_grace = 0.5
crash_loop_restarts = 5
crash_loop_window = 30
interval = 300

[modules]
enabled = false
tick_interval = 2
hook_timeout = 1.5

[status_api]
enabled = true
port = 9100

[log]
json = true
level = "debug"
""")
    config = load_config(path)
    assert (config.channel, config.platform, config.device_id) == ("beta", "linux-aarch64",
                                                                   "dev-7")
    assert (config.keep, config.poll_interval, config.poll_jitter) == (5, 60.0, 0.5)
    assert config.server_url == "https://fleet.example/"
    assert config.fleet_mode
    assert config.enrollment_token == "tok"
    assert config.tags == {"site": "lab", "rack": "3"}
    assert config.policy == PolicyConfig(
        auto=frozenset({UpdateType.PATCH, UpdateType.SECURITY}),
        window=MaintenanceWindow(time(22, 0), time(4, 0)),
        window_exempt=frozenset({UpdateType.HOTFIX}))
    assert config.download == DownloadConfig(timeout=5.0, deadline=100.5, retries=2,
                                             backoff=0.5, max_backoff=4.0, bandwidth=1000,
                                             deltas=False)
    assert config.process == ProcessConfig(command=("./bin/app", "--serve"),
                                           restart_command=("systemctl", "restart", "hello"),
                                           env={"MODE": "prod"}, stop_timeout=3.0)
    assert config.health == HealthConfig(command=("./check", "-q"),
                                         url="http://127.0.0.1:9000/health", timeout=12.0,
                                         startup_grace=0.5, crash_loop_restarts=5,
                                         crash_loop_window=30.0, interval=300.0)
    assert config.modules == ModulesConfig(enabled=False, tick_interval=2.0, hook_timeout=1.5)
    assert config.status_api == StatusApiConfig(enabled=True, port=9100)
    assert (config.log_json, config.log_level) == (True, "DEBUG")


def test_relative_paths_are_resolved_against_the_config_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    path = write(tmp_path, """\
app = "hello"
root = "device"
repo_url = "http://127.0.0.1:8080/"
trusted_root = "../keys/root.json"
""", name="etc/agent.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.root == (tmp_path / "etc" / "device").resolve()
    assert config.trusted_root == (tmp_path / "keys" / "root.json").resolve()


def test_a_relative_config_path_is_resolved_too(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, MINIMAL.replace('"/opt/hello"', '"dev"'), name="etc/agent.toml")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/agent.toml"))
    assert config.root == (tmp_path / "etc" / "dev").resolve()
    assert config.root.is_absolute()


def test_fleet_mode_without_repo_url(tmp_path: Path) -> None:
    text = MINIMAL.replace('repo_url = "http://127.0.0.1:8080"',
                           'server_url = "http://127.0.0.1:8000"')
    config = load_config(write(tmp_path, text))
    assert config.repo_url is None
    assert config.fleet_mode


@pytest.mark.parametrize(("text", "names"), [
    (MINIMAL.replace('app = "hello"\n', ""), "'app'"),
    (MINIMAL.replace('root = "/opt/hello"\n', ""), "'root'"),
    (MINIMAL.replace('trusted_root = "/etc/fleetup/root.json"\n', ""), "'trusted_root'"),
    (MINIMAL.replace('repo_url = "http://127.0.0.1:8080"\n', ""), "repo_url"),
])
def test_missing_keys(tmp_path: Path, text: str, names: str) -> None:
    assert names in error_of(tmp_path, text)


@pytest.mark.parametrize(("extra", "names"), [
    ("keep = \"three\"\n", "keep must be int"),
    ("keep = true\n", "keep must be int"),
    ("keep = 0\n", "keep must be at least 1"),
    ("poll_interval = \"1h\"\n", "poll_interval must be float"),
    ("poll_interval = -5\n", "poll_interval must be positive"),
    ("channel = 7\n", "channel must be str"),
    ("channel = \"no spaces\"\n", "invalid channel name"),
    ("app2 = 1\n", "unknown key app2"),
    ("tags = {site = 3}\n", "tags must be a table of strings"),
    ("policy = 3\n", "[policy] must be a table"),
    ("[policy]\nauto = \"patch\"\n", "policy.auto must be a list"),
    ("[policy]\nauto = [\"sometimes\"]\n", "policy.auto"),
    ("[policy]\nsometimes = 1\n", "unknown key policy.sometimes"),
    ("[download]\nretries = 1.5\n", "download.retries must be int"),
    ("[download]\ntimeout = 0\n", "download.timeout must be positive"),
    ("[download]\ntimeout = \"soon\"\n", "download.timeout must be float"),
    ("[download]\nresume = true\n", "unknown key download.resume"),
    ("[process]\ncommand = \"./run.sh\"\n", "process.command must be a list of strings"),
    ("[process]\nenv = {A = 1}\n", "process.env must be a table of strings"),
    ("[health]\ncommand = [1]\n", "health.command must be a list of strings"),
    ("[health]\ntimeout = -1\n", "health.timeout must be positive"),
    ("[health]\nurl = 5\n", "health.url must be str"),
    ("[health]\ncrash_loop_restarts = \"3\"\n", "health.crash_loop_restarts must be int"),
    ("[modules]\nenabled = \"yes\"\n", "modules.enabled must be bool"),
    ("[modules]\nhook_timeout = 0\n", "modules.hook_timeout must be positive"),
    ("[status_api]\nport = 70000\n", "status_api.port must be a TCP port"),
    ("[status_api]\nhost = \"0.0.0.0\"\n", "unknown key status_api.host"),
    ("[log]\njson = \"yes\"\n", "log.json must be bool"),
    ("[log]\njsn = true\n", "unknown key log.jsn"),
    ("[log]\nlevel = \"LOUD\"\n", "log.level"),
])
def test_bad_values_name_the_key(tmp_path: Path, extra: str, names: str) -> None:
    assert names in error_of(tmp_path, MINIMAL + extra)


@pytest.mark.parametrize(("key", "value"), [("repo_url", "ftp://example/"),
                                            ("repo_url", "127.0.0.1:8080"),
                                            ("server_url", "file:///srv")])
def test_a_bad_url_names_the_key(tmp_path: Path, key: str, value: str) -> None:
    message = error_of(tmp_path, MINIMAL + f'{key} = "{value}"\n'
                       if key == "server_url" else
                       MINIMAL.replace('"http://127.0.0.1:8080"', f'"{value}"'))
    assert key in message
    assert value in message


@pytest.mark.parametrize("window", ["22:00", "25:00-04:00", "night", "22:00-4pm",
                                    "03:00-03:00"])
def test_a_bad_window_names_the_key(tmp_path: Path, window: str) -> None:
    message = error_of(tmp_path, MINIMAL + f'[policy]\nwindow = "{window}"\n')
    assert "policy.window" in message


def test_not_toml_and_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "app = \n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_urls_get_a_trailing_slash(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL.replace(
        '"http://127.0.0.1:8080"', '"https://cdn.example/repo"')))
    assert config.repo_url == "https://cdn.example/repo/"


def test_window_parse_and_str() -> None:
    window = MaintenanceWindow.parse(" 23:30 - 01:15 ")
    assert window == MaintenanceWindow(time(23, 30), time(1, 15))
    assert str(window) == "23:30-01:15"
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        MaintenanceWindow.parse("23:30")


def test_apply_policy_and_pre_command(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + '[policy]\napply = "next-start"\n'
                               '[health]\npre_command = ["./can-update", "--battery"]\n'))
    assert config.policy.apply == "next-start"
    assert config.health.pre_command == ("./can-update", "--battery")
    default = load_config(write(tmp_path, MINIMAL, "default.toml"))
    assert (default.policy.apply, default.health.pre_command) == ("now", ())


@pytest.mark.parametrize(("extra", "names"), [
    ('[policy]\napply = "later"\n', "policy.apply must be now, next-start or manual"),
    ("[policy]\napply = true\n", "policy.apply must be str"),
    ('[health]\npre_command = "./can-update"\n', "health.pre_command must be a list"),
])
def test_a_bad_apply_policy_or_pre_command_names_the_key(tmp_path: Path, extra: str,
                                                         names: str) -> None:
    assert names in error_of(tmp_path, MINIMAL + extra)
