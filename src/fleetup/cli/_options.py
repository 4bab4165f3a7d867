"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

repo_option = click.option(
    "--repo", "repo_dir", required=True,
    type=click.Path(file_okay=False, path_type=Path), help="The release repository directory.")
passphrase_option = click.option(
    "--passphrase-env", metavar="VAR", default=None,
    help="Environment variable holding the passphrase of encrypted keys.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
