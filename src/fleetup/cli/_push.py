"""``fleetup release push``: publish a release built by ``release add`` to a fleet server.

Sends the publisher's signed targets metadata, any root versions the server lacks, and
the files the targets reference that the server does not hold yet (it serves its
targets metadata publicly, so the difference is worked out here). The server checks
every signature and hash before it publishes anything.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from fleetup.cli._options import json_option, repo_option
from fleetup.cli._output import emit_json, say
from fleetup.errors import ReleaseNotFoundError, RepositoryError, ServerAPIError


@click.command("push")
@repo_option
@click.option("--app", required=True)
@click.option("--version", "version", required=True)
@click.option("--server", required=True, metavar="URL", help="The fleet server's URL.")
@json_option
def push(repo_dir: Path, app: str, version: str, server: str, as_json: bool) -> None:
    """Publish APP VERSION (all its platforms) from REPO to the fleet server at URL."""
    from fleetup._versions import parse_version
    from fleetup.cli._api import operator_client, request_json
    from fleetup.repository import open_repository, releases_of, target_file_name

    repo = open_repository(repo_dir, [], None)
    targets = repo.targets()
    wanted = parse_version(version)
    if not any(f.app == app and f.parsed_version == wanted
               for _, f in releases_of(targets).values()):
        raise ReleaseNotFoundError(f"no release {app} {version} in {repo_dir}")
    targets_name = f"{targets.version}.targets.json"
    with operator_client(server) as client:
        remote_root, remote_targets = _remote_state(client)
        missing = [(path, target) for path, target in targets.targets.items()
                   if remote_targets.get(path, {}).get("hashes") != target.hashes]
        roots = [repo.layout.metadata / f"{v}.root.json"
                 for v in range(remote_root + 1, repo.latest_root_version() + 1)]
        with contextlib.ExitStack() as stack:
            files: list[tuple[str, Any]] = [
                ("targets", (targets_name, (repo.layout.metadata / targets_name).read_bytes(),
                             "application/json"))]
            files += [("roots", (p.name, p.read_bytes(), "application/json")) for p in roots]
            for path, target in missing:
                handle = stack.enter_context(target_file_name(repo.layout, target).open("rb"))
                files.append(("files", (Path(path).name, handle, "application/octet-stream")))
            data = {"paths": [path for path, _ in missing]}
            result = request_json(client, "POST", "/api/v1/releases", files=files, data=data)
    if as_json:
        emit_json(result)
        return
    say(f"pushed {app} {version}: targets v{result['targets_version']}, "
        f"{len(result['stored_files'])} new file(s) stored")


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
