"""``fleetup repo serve``: a repository's public tree over HTTP on loopback, to try it out.

The standard library's ``SimpleHTTPRequestHandler`` does the HTTP (and drops ``..``
segments, encoded or not); this module only roots it at ``REPO/public``, binds it to
127.0.0.1, and answers 404 for anything that is not a file inside that tree (no folder
listings, no symbolic link out of it). A production mirror is any static host or CDN
serving the same folder.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fleetup.errors import NetworkError, RepositoryError
from fleetup.repository._migrate import check_layout
from fleetup.repository._store import RepoLayout

__all__ = ["LOOPBACK", "public_server"]

LOOPBACK = "127.0.0.1"


class _PublicFiles(SimpleHTTPRequestHandler):
    """Files under ``directory`` and nothing else."""

    def send_head(self) -> Any:
        base = Path(self.directory).resolve()
        wanted = Path(self.translate_path(self.path)).resolve()
        if not wanted.is_relative_to(base) or not wanted.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        return super().send_head()


def public_server(path: Path, port: int) -> ThreadingHTTPServer:
    """A server (not yet serving) for ``path``'s public tree on 127.0.0.1:``port``.

    Raises:
        RepositoryError: not a repository, or in the old layout.
        NetworkError: the port cannot be bound (in use, or not allowed).
    """
    layout = RepoLayout(path)
    check_layout(layout)
    if not layout.exists():
        raise RepositoryError(f"not a fleetup repository: {path} (run `fleetup repo init`)")
    handler = functools.partial(_PublicFiles, directory=str(layout.public))
    try:
        return ThreadingHTTPServer((LOOPBACK, port), handler)
    except OSError as e:
        raise NetworkError(f"cannot listen on {LOOPBACK}:{port}: {e.strerror or e}") from e
