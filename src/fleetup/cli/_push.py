"""``fleetup release push``: publish one release built by ``release add`` to a fleet server.

Sends the publisher's signed targets metadata, any root versions the server lacks, and
the files of this release (its archives and deltas, on every platform) and the signed
indexes that the server does not hold yet. The server checks every signature and hash
before it publishes anything, and offers only releases whose files it holds: releases
added together push one by one, in any order, and a push that is retried, or of a
release already there, succeeds and says so.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fleetup.cli._options import json_option, repo_option
from fleetup.cli._output import emit_json, say
from fleetup.errors import ReleaseNotFoundError, RepositoryError, ServerAPIError

if TYPE_CHECKING:
    import httpx
    from tuf.api.metadata import TargetFile

    from fleetup.repository import FileRepository


@click.command("push")
@repo_option
@click.option("--app", required=True)
@click.option("--version", "version", required=True)
@click.option("--server", required=True, metavar="URL", help="The fleet server's URL.")
@json_option
def push(repo_dir: Path, app: str, version: str, server: str, as_json: bool) -> None:
    """Publish APP VERSION (all its platforms) from REPO to the fleet server at URL."""
    from fleetup.cli._api import operator_client, request_json
    from fleetup.repository import open_repository

    repo = open_repository(repo_dir, [], None)
    wanted = _wanted_paths(repo, app, version, repo_dir)
    with operator_client(server) as client:
        remote_root, remote_targets = _remote_state(client)
        missing = [p for p in wanted if not _on_server(client, repo, p, remote_targets)]
        roots = [_metadata_file(repo, f"{v}.root.json")
                 for v in range(remote_root + 1, repo.latest_root_version() + 1)]
        with contextlib.ExitStack() as stack:
            files = _form_files(repo, roots, missing, stack)
            data = {"paths": missing, "app": app, "version": version}
            result = request_json(client, "POST", "/api/v1/releases", files=files, data=data)
    if as_json:
        emit_json(result)
    else:
        _report(app, version, result)


def _metadata_file(repo: FileRepository, name: str) -> Path:
    """Where the publisher's metadata file ``name`` lives (the one place that knows)."""
    return repo.layout.metadata / name


def _wanted_paths(repo: FileRepository, app: str, version: str, repo_dir: Path) -> list[str]:
    """This release's parts on every platform, then the shared targets (indexes).

    Raises:
        ReleaseNotFoundError: the repository has no such release.
    """
    from fleetup._release_parts import shared_targets, version_parts
    from fleetup._versions import parse_version

    target = parse_version(version)
    customs = {path: t.custom for path, t in repo.targets().targets.items()}
    parts = version_parts(customs, app, lambda v: parse_version(v) == target)
    if not parts:
        raise ReleaseNotFoundError(f"no release {app} {version} in {repo_dir}")
    return parts + shared_targets(customs)


def _on_server(client: httpx.Client, repo: FileRepository, path: str,
               remote_targets: dict[str, Any]) -> bool:
    """Whether the server holds these bytes: its targets name them with the same hashes
    and the file is there (a release named but not pushed yet has no file)."""
    import httpx

    target = repo.targets().targets[path]
    if remote_targets.get(path, {}).get("hashes") != target.hashes:
        return False
    dirname, _, basename = path.rpartition("/")
    url = f"/repo/targets/{dirname}/{target.hashes['sha256']}.{basename}"
    try:
        return client.head(url).status_code == 200
    except httpx.HTTPError:
        return False  # in doubt, send the file: the server checks it anyway


def _form_files(repo: FileRepository, roots: list[Path], missing: list[str],
                stack: contextlib.ExitStack) -> list[tuple[str, Any]]:
    from fleetup.repository import target_file_name

    targets_name = f"{repo.targets().version}.targets.json"
    files: list[tuple[str, Any]] = [
        ("targets", (targets_name, _metadata_file(repo, targets_name).read_bytes(),
                     "application/json"))]
    files += [("roots", (p.name, p.read_bytes(), "application/json")) for p in roots]
    for path in missing:
        target: TargetFile = repo.targets().targets[path]
        handle = stack.enter_context(target_file_name(repo.layout, target).open("rb"))
        files.append(("files", (Path(path).name, handle, "application/octet-stream")))
    return files


def _report(app: str, version: str, result: dict[str, Any]) -> None:
    if result.get("already_pushed"):
        say(f"{app} {version} is already on the server (targets v{result['targets_version']}):"
            " nothing to do")
    else:
        say(f"pushed {app} {version}: targets v{result['targets_version']}, "
            f"{len(result['stored_files'])} new file(s) stored")
    pending = result.get("pending") or []
    if pending:
        say(f"not offered until pushed: {', '.join(pending)}")


def _remote_state(client: Any) -> tuple[int, dict[str, Any]]:
    """The server's newest root version and its current targets (path → target info)."""
    from fleetup.cli._api import request_json

    try:
        timestamp = request_json(client, "GET", "/repo/metadata/timestamp.json")
    except ServerAPIError as e:
        if e.status_code != 404:
            raise
        raise RepositoryError("the server has no release store yet: run `fleetup admin repo "
                              "init --from REPO` on the server first") from e
    try:
        snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"]
        snapshot = request_json(client, "GET", f"/repo/metadata/{snapshot_version}.snapshot.json")
        targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
        targets = request_json(client, "GET", f"/repo/metadata/{targets_version}.targets.json")
        root = request_json(client, "GET", "/repo/metadata/root.json")
        return int(root["signed"]["version"]), dict(targets["signed"]["targets"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise RepositoryError(f"the server's repository metadata is unreadable: {e}") from e
