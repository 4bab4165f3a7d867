"""Releases: push (publisher) and list (viewer). The signed files are served at /repo/."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._operations import Upload, push_release
from fleetup.server._schemas import PushResult, ReleasePublic, ReleasesPublic
from fleetup.server.deps import FleetDep, PublisherDep, SessionDep, ViewerDep

router = APIRouter(prefix="/releases", tags=["releases"])


@router.get("", response_model=ReleasesPublic)
def list_releases(session: SessionDep, _: ViewerDep, app: str | None = None,
                  version: str | None = None) -> ReleasesPublic:
    rows = _crud.list_releases(session, app=app, version=version)
    return ReleasesPublic(data=[ReleasePublic.model_validate(r) for r in rows], count=len(rows))


@router.post("", response_model=PushResult, status_code=201)
def push(session: SessionDep, fleet: FleetDep, operator: PublisherDep,
         targets: Annotated[UploadFile, File(description="N.targets.json, as signed")],
         roots: Annotated[list[UploadFile] | None, File()] = None,
         files: Annotated[list[UploadFile] | None, File()] = None,
         paths: Annotated[list[str] | None, Form(description="target path of each file")]
         = None,
         app: Annotated[str | None, Form(max_length=100)] = None,
         version: Annotated[str | None, Form(max_length=100)] = None) -> PushResult:
    """Publish targets metadata the publisher signed, with the files the server lacks.

    With ``app`` and ``version``, the push is for that release alone: its files must
    be there, the targets' other releases wait (not offered) until they are pushed,
    and pushing a release already on the server succeeds with ``already_pushed``.
    """
    files, paths = files or [], paths or []
    if len(files) != len(paths):
        raise ServerAPIError("send one 'paths' field per file", "invalid_request", 422)
    if (app is None) != (version is None):
        raise ServerAPIError("send both 'app' and 'version', or neither", "invalid_request",
                             422)
    outcome, rows = push_release(
        session, fleet.store, targets=targets.file.read(),
        roots=[r.file.read() for r in roots or []],
        uploads=[Upload(p, f.file) for p, f in zip(paths, files, strict=True)],
        actor=operator.actor, release=(app, version) if app and version else None)
    fleet.changed()
    return PushResult(targets_version=outcome.targets_version,
                      snapshot_version=outcome.snapshot_version,
                      timestamp_version=outcome.timestamp_version,
                      stored_files=outcome.stored_files,
                      releases=[ReleasePublic.model_validate(r) for r in rows],
                      pending=outcome.pending, already_pushed=outcome.already)
