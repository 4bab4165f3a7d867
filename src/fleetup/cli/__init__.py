"""The ``fleetup`` command line: one module per command group, one error boundary.

Commands are thin: they parse options, call the library, and print. Only
:func:`main` catches everything, turning any error into one line on stderr (and the
traceback with ``--debug``) and an exit code.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from fleetup.errors import FleetupError

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Optional packages, by the extra that installs them (a device installs none of these).
_EXTRAS = {name: "server" for name in (
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "jinja2",
    "prometheus_client", "pydantic", "pydantic_settings", "multipart")}
_EXTRAS["hdiffpatch"] = "hdiff"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    from fleetup.cli._root import cli

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("FLEETUP_DEBUG") == "1"
    try:
        result = cli.main(args=args, prog_name="fleetup", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as e:
        if "--json" in args:
            _json_error(e.format_message(), "UsageError")
        e.show()
        return e.exit_code
    except FleetupError as e:
        if debug:
            traceback.print_exc()
        if "--json" in args:
            _json_error(str(e), type(e).__name__, getattr(e, "code", None))
        click.echo(f"error: {e}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
    except ModuleNotFoundError as e:
        extra = _EXTRAS.get((e.name or "").partition(".")[0])
        if extra is None:
            return _internal_error(e, debug)
        if debug:
            traceback.print_exc()
        click.echo(f"error: this command needs {e.name}: pip install 'fleetup[{extra}]'",
                   err=True)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the one boundary that must catch everything
        return _internal_error(e, debug)
    return result if isinstance(result, int) else 0


def _json_error(message: str, kind: str, code: object = None) -> None:
    """Under ``--json`` a failure is a JSON object too (on stdout, where scripts read),
    beside the usual line on stderr; the exit code does not change."""
    body: dict[str, object] = {"error": message, "type": kind}
    if isinstance(code, str):
        body["code"] = code
    sys.stdout.write(json.dumps(body, sort_keys=True) + "\n")
    sys.stdout.flush()


def _internal_error(error: Exception, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    click.echo(f"internal error: {type(error).__name__}: {error} "
               "(run with --debug for the traceback, and please report it)", err=True)
    return EXIT_ERROR


def console_main() -> None:  # pragma: no cover - the installed entry point
    sys.exit(main())
