"""``fleetup agent -c AGENT.toml COMMAND``: the device side.

Exit codes (scripts depend on them): ``check`` 0 up to date, 10 update available;
``update`` 0 installed, staged (``--download-only``), held or nothing to do, 20
installed but rolled back; ``apply`` as ``update``, but 1 when held or nothing is
staged; ``verify`` 0
intact, 30 damaged; every command 1 on error (nothing changed).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fleetup.cli._options import json_option
from fleetup.cli._output import emit_json, result, table

if TYPE_CHECKING:
    from fleetup.agent._agent import Agent, Outcome
    from fleetup.agent._config import AgentConfig

EXIT_UPDATE_AVAILABLE = 10
EXIT_ROLLED_BACK = 20
EXIT_DAMAGED = 30


@click.group()
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The agent's AGENT.toml.")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of text.")
@click.pass_context
def agent(ctx: click.Context, config_path: Path, log_json: bool) -> None:
    """The update agent on a device: check, update, apply, run, status, rollback, history,
    verify."""
    ctx.obj = {"config_path": config_path, "log_json": log_json}


def _config(ctx: click.Context) -> AgentConfig:
    from fleetup.agent._config import load_config

    return load_config(ctx.obj["config_path"])


def _setup_logs(config: AgentConfig, ctx: click.Context, console: str = "WARNING") -> None:
    """``agent.log`` at the configured level for every command (the daemon's file); the
    console at ``console`` ("INFO": the configured level too, for ``run``)."""
    from fleetup.agent._logs import setup_logging
    from fleetup.agent._store import DeviceLayout

    log_dir = DeviceLayout(config.root).logs
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        log_dir = None  # type: ignore[assignment]
    setup_logging(log_dir, json_lines=ctx.obj["log_json"] or config.log_json,
                  level=config.log_level,
                  console_level=config.log_level if console == "INFO" else console)


@contextmanager
def _logged(command: str) -> Iterator[None]:
    """A command that refuses (an integrity failure, a refused lock, a bad answer) says
    so in ``agent.log`` too; the console gets ``main()``'s one line, not a second."""
    from fleetup.errors import FleetupError

    try:
        yield
    except FleetupError as e:
        logging.getLogger("fleetup.agent").error("%s refused: %s", command, e,
                                                 extra={"file_only": True})
        raise


def _make_agent(config: AgentConfig, **kwargs: Any) -> Agent:
    from fleetup.agent import build_agent

    return build_agent(config, **kwargs)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    """A Rich progress bar per download when stderr is a terminal; nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from fleetup.cli._output import err

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err(),
                  transient=False) as bars:
        def start(label: str, total: int) -> Callable[[int], None]:
            task = bars.add_task(label, total=total)
            return lambda n: bars.advance(task, n)

        yield start


@agent.command()
@json_option
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Is there a release to install? Exit 0 up to date, 10 update available."""
    config = _config(ctx)
    _setup_logs(config, ctx)
    with _logged("check"):
        answer = _make_agent(config).check()
    if as_json:
        emit_json({"installed": answer.installed, "available": answer.available,
                   "decision": answer.decision, "reason": answer.reason,
                   "not_offered": [{"version": v, "reason": r} for v, r in answer.skipped],
                   "waiting": answer.waiting.to_dict() if answer.waiting else None})
    elif answer.waiting:
        result(f"update available: {answer.installed or 'nothing'} → {answer.available}, "
               f"but `update` will wait: {answer.waiting.reason}")
    elif answer.available:
        result(f"update available: {answer.installed or 'nothing'} → {answer.available} "
            f"({answer.reason})")
    else:
        result(f"up to date: {answer.installed or 'nothing installed'} ({answer.reason})")
        for version, reason in answer.skipped:
            result(f"  not offered {version}: {reason}")
    ctx.exit(EXIT_UPDATE_AVAILABLE if answer.update_available else 0)


@agent.command()
@click.option("--version", "wanted", default=None,
              help="Install this version on purpose (even a manual-only type).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--download-only", is_flag=True,
              help="Fetch, verify and stage, then stop; `agent apply` switches later.")
@json_option
@click.pass_context
def update(ctx: click.Context, wanted: str | None, no_progress: bool, download_only: bool,
           as_json: bool) -> None:
    """One whole cycle: download, verify, stage, switch, health check, commit or roll back.

    Exit 0 installed, staged or nothing to do, 20 installed but rolled back, 1 error.
    """
    config = _config(ctx)
    _setup_logs(config, ctx)
    with _logged("update"), _progress(not no_progress and not as_json) as progress:
        outcome = _make_agent(config, progress=progress).update(wanted,
                                                                download_only=download_only)
    _report_outcome(ctx, outcome, as_json, held_is_error=False)


@agent.command()
@json_option
@click.pass_context
def apply(ctx: click.Context, as_json: bool) -> None:
    """Switch to the staged release (no network), health-gated like any update.

    Exit 0 installed, 20 installed but rolled back, 1 error (held, or nothing staged).
    """
    config = _config(ctx)
    _setup_logs(config, ctx)
    with _logged("apply"):
        outcome = _make_agent(config).apply()
    _report_outcome(ctx, outcome, as_json, held_is_error=True)


def _report_outcome(ctx: click.Context, outcome: Outcome, as_json: bool,
                    held_is_error: bool) -> None:
    """Print an update's or apply's outcome and exit with its code."""
    from fleetup.agent._agent import Result

    errors = {Result.FAILED, Result.STOPPED} | ({Result.HELD} if held_is_error else set())
    code = EXIT_ROLLED_BACK if outcome.result is Result.ROLLED_BACK else \
        1 if outcome.result in errors else 0
    if as_json:
        emit_json({"result": outcome.result.value, "version": outcome.version,
                   "target": outcome.target, "reason": outcome.reason,
                   "waiting": outcome.waiting.to_dict() if outcome.waiting else None})
    elif outcome.result is Result.INSTALLED:
        result(f"installed {outcome.target}")
    elif outcome.result is Result.ROLLED_BACK:
        result(f"rolled back: {outcome.target} failed its health check ({outcome.reason}); "
            f"running {outcome.version or 'nothing'}")
    elif outcome.result is Result.REVERTED:
        result(f"switched back to {outcome.version}: {outcome.reason}")
    elif outcome.result is Result.NOTHING and outcome.waiting:
        result(f"not installed now: {outcome.waiting.line()}")
    elif outcome.result is Result.NOTHING:
        result(f"nothing to do: {outcome.reason}")
    elif outcome.result is Result.STAGED:
        result(f"staged {outcome.target}; `fleetup agent apply` switches to it")
    elif outcome.result is Result.HELD and not held_is_error:
        result(f"not installed now ({outcome.target} {outcome.reason}); retried next cycle")
    if code == 1 and not as_json:
        click.echo(f"error: {outcome.reason}", err=True)
    ctx.exit(code)


@agent.command()
@click.option("--probation", "probation", default=None, hidden=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Prove this fleetup to the agent that started it; write the proof here.")
@click.pass_context
def run(ctx: click.Context, probation: Path | None) -> None:
    """The daemon: poll, update, supervise the app, run modules; stops cleanly on SIGTERM."""
    from fleetup.agent import build_daemon

    config = _config(ctx)
    _setup_logs(config, ctx, console="INFO")
    if probation is not None:
        from fleetup.agent._self_update import prove

        prove(config, probation)
        return
    daemon, api = build_daemon(config)
    daemon.install_signal_handlers()
    if api is not None:
        api.start()
    try:
        code = daemon.run()
    finally:
        if api is not None:
            api.stop()
    if daemon.handover:
        from fleetup.agent._self_update import exec_handover

        exec_handover(daemon.handover)
    ctx.exit(code)


@agent.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Installed version, state, last check, pending update."""
    config = _config(ctx)
    body = _make_agent(config).status()
    if as_json:
        emit_json(body)
        return
    result(f"{body['app']} {body['version'] or '(nothing installed)'} — {body['state']}"
        f" ({body['mode']} mode, channel {body['channel']})")
    result(f"last check: {body['last_check'] or 'never'}")
    pending = body.get("pending")
    if pending:
        result(f"pending: {pending['version']} ({pending['type']}): {pending['reason']}")
    _status_staged(body)
    result(f"kept: {', '.join(body['kept']) or 'none'}")
    if body.get("running_yanked"):
        result(f"runs a yanked release: {body['running_yanked']}")
    for failed in body["failed"]:
        result(f"not installed again by itself: {failed['version']} ({failed['reason']})")


def _status_staged(body: dict[str, Any]) -> None:
    staged, held, progress = body.get("staged"), body.get("held"), body.get("progress")
    if staged:
        result(f"staged: {staged['version']} since {staged['since']} (apply: {body['apply']})")
    if held:
        result(f"held: {held['by']} ({held['reason']})")
    if progress and progress.get("step") == "downloading":
        total = progress.get("total")
        result(f"downloading: {progress.get('done', 0)} of {total or '?'} bytes")


@agent.command()
@click.option("--to", "to", default=None, help="A kept version. [default: the previous one]")
@json_option
@click.pass_context
def rollback(ctx: click.Context, to: str | None, as_json: bool) -> None:
    """Switch back to a kept release."""
    config = _config(ctx)
    _setup_logs(config, ctx)
    with _logged("rollback"):
        outcome = _make_agent(config).rollback(to)
    if as_json:
        emit_json({"result": outcome.result.value, "version": outcome.version,
                   "reason": outcome.reason})
    else:
        result(f"now running {outcome.version}" if outcome.version else outcome.reason)


@agent.command()
@json_option
@click.pass_context
def history(ctx: click.Context, as_json: bool) -> None:
    """Past updates and rollbacks, with reasons."""
    config = _config(ctx)
    records = _make_agent(config).history()
    if as_json:
        emit_json(records)
        return
    table(None, ["finished", "kind", "result", "from", "attempted", "now", "reason"],
          [(r.get("finished_at"), r.get("kind"), r.get("result"), r.get("from"),
            r.get("attempted"), r.get("to"), r.get("reason")) for r in records])


@agent.command()
@click.option("--repair", is_flag=True, help="Re-fetch and fix damaged trees.")
@json_option
@click.pass_context
def verify(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Check installed trees against the signed hashes. Exit 0 intact, 30 damaged."""
    config = _config(ctx)
    _setup_logs(config, ctx)
    with _logged("verify"):
        report = _make_agent(config).verify(repair=repair)
    if as_json:
        emit_json({"checked": report.checked, "damaged": report.damaged,
                   "repaired": report.repaired})
    else:
        for version in report.checked:
            damage = report.damaged.get(version)
            if not damage:
                result(f"{version}: intact")
                continue
            fixed = " — repaired" if version in report.repaired else ""
            result(f"{version}: damaged ({len(damage)} entries){fixed}")
            for path in damage[:20]:
                result(f"    {path}")
    ctx.exit(EXIT_DAMAGED if report.damaged else 0)


@agent.command()
@click.argument("name", required=False)
@click.option("--downgrade", is_flag=True,
              help="Then install the newest release of NAME even if it is older than the "
                   "installed one.")
@click.option("--reset", is_flag=True, help="Drop the device's choice: the config's channel.")
@json_option
@click.pass_context
def channel(ctx: click.Context, name: str | None, downgrade: bool, reset: bool,
            as_json: bool) -> None:
    """Show or set this device's channel (kept under ROOT/.fleetup/, over the config's).

    Switching channel installs nothing older by itself: newer releases of the new channel
    come as usual; --downgrade installs its newest release now, even an older one.
    Exit 0 done, 20 installed but rolled back, 1 error.
    """
    from fleetup._facts import check_name
    from fleetup.errors import UsageError

    config = _config(ctx)
    _setup_logs(config, ctx)
    if name is not None and reset:
        raise UsageError("give a channel NAME or --reset, not both")
    agent_ = _make_agent(config)
    with _logged("channel"):
        if name is not None:
            agent_.store.save_channel_override(check_name("channel", name))
        elif reset:
            agent_.store.save_channel_override(None)
        outcome = agent_.downgrade() if downgrade else None
    _report_channel(ctx, agent_, outcome, as_json)


def _report_channel(ctx: click.Context, agent_: Agent, outcome: Any, as_json: bool) -> None:
    from fleetup.agent._agent import Result

    source = "device" if agent_.store.channel_override() else "config"
    body: dict[str, Any] = {"channel": agent_.channel(), "source": source,
                            "config_channel": agent_.config.channel}
    code = 0
    if outcome is not None:
        body["result"] = {"result": outcome.result.value, "version": outcome.version,
                          "target": outcome.target, "reason": outcome.reason}
        code = {Result.ROLLED_BACK: EXIT_ROLLED_BACK, Result.FAILED: 1,
                Result.STOPPED: 1}.get(outcome.result, 0)
    if as_json:
        emit_json(body)
    else:
        where = "set on this device" if source == "device" else "from the config file"
        result(f"channel {body['channel']} ({where})")
        if outcome is not None:
            result(f"{outcome.result.value}: {outcome.target or outcome.version or ''} "
                   f"({outcome.reason})")
    ctx.exit(code)
