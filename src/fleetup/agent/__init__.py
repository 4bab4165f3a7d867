"""The device side: a persisted, crash-safe update state machine over TUF-verified releases.

The agent never imports the server or the CLI; it installs without FastAPI or SQLAlchemy.
:func:`build_agent` and :func:`build_daemon` are the composition root: they pick the
release source, director, event sink and app restarter for static or fleet mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from fleetup.agent._agent import Agent, CheckResult, Outcome, Result, VerifyReport
from fleetup.agent._config import AgentConfig, load_config
from fleetup.agent._daemon import Daemon
from fleetup.agent._lifecycle import RESUME, TRANSITIONS, Event, Journal, State
from fleetup.agent._supervisor import AppSupervisor, Restarter

if TYPE_CHECKING:
    from fleetup.agent._modules import ModuleHost
    from fleetup.agent._status_api import StatusApi


def __getattr__(name: str) -> object:
    # Loaded on first use only: a resting daemon without them does not carry their code.
    if name == "StatusApi":
        from fleetup.agent._status_api import StatusApi

        return StatusApi
    if name == "ModuleHost":
        from fleetup.agent._modules import ModuleHost

        return ModuleHost
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "RESUME",
    "TRANSITIONS",
    "Agent",
    "AgentConfig",
    "CheckResult",
    "Daemon",
    "Event",
    "Journal",
    "ModuleHost",
    "Outcome",
    "Result",
    "State",
    "StatusApi",
    "VerifyReport",
    "build_agent",
    "build_daemon",
    "load_config",
]

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def build_agent(config: AgentConfig, *, progress: ProgressFactory | None = None,
                restarter: Restarter | None = None) -> Agent:
    """An :class:`Agent` wired for the config's mode (static, or fleet with a server)."""
    if config.fleet_mode:
        from fleetup.agent._fleet import fleet_parts

        director, sink = fleet_parts(config)
        return Agent(config, director=director, sink=sink, progress=progress,
                     restarter=restarter)
    return Agent(config, progress=progress, restarter=restarter)


def build_daemon(config: AgentConfig) -> tuple[Daemon, StatusApi | None]:
    """A daemon supervising the app (if a command is configured) with its modules."""
    agent_probe = Agent(config)
    supervisor = None
    if config.process.command:
        supervisor = AppSupervisor(config.process.command, agent_probe.store.layout.current,
                                   agent_probe.app_env,
                                   stop_timeout=config.process.stop_timeout,
                                   log_file=agent_probe.store.layout.logs / "app.log")
    agent = build_agent(config, restarter=supervisor)
    if config.self_update is not None:
        from fleetup.agent._self_update import SelfUpdater, adopt_app

        adopt_app(supervisor)
    modules = None
    if config.modules.enabled:
        from fleetup.agent._modules import ModuleHost

        fleetup_env = lambda: {k: v for k, v in agent.app_env().items()  # noqa: E731
                               if k.startswith("FLEETUP_")}
        modules = ModuleHost(agent.store.layout.current, hook_timeout=config.modules.hook_timeout,
                             environment=fleetup_env)
    daemon = Daemon(agent, supervisor=supervisor, modules=modules)
    if config.self_update is not None:
        daemon.self_update = SelfUpdater(config, agent)
    if config.push.url is not None:  # nats-py loads only when push is on
        from fleetup._push import import_nats
        from fleetup.agent._push import PushListener

        import_nats()
        # The channel set on the device (agent channel) picks the subject; a change is
        # heard after the daemon restarts.
        daemon.push = PushListener(replace(config, channel=agent.channel()),
                                   daemon.check_in_within)
    api = None
    if config.status_api.enabled:  # its HTTP server code loads only when it is on
        from fleetup.agent._status_api import StatusApi

        api = StatusApi(daemon, config.status_api.port)
    return daemon, api
