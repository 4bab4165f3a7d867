"""Path and query parameters shared by the routes, bounded by what the database holds.

An id past PostgreSQL's ``INTEGER`` (or SQLite's 64 bits) must be a 422 at the edge, not
an overflow deep in the driver; likewise an offset. Text in URLs is checked by
:func:`no_nul_in_url` for the whole API: PostgreSQL's text cannot hold a NUL character.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request

from fleetup.errors import ServerAPIError
from fleetup.server._schemas import INT_MAX

__all__ = ["IdFilter", "Offset", "RowId", "no_nul_in_url"]

RowId = Annotated[int, Path(ge=1, le=INT_MAX)]
IdFilter = Annotated[int | None, Query(ge=1, le=INT_MAX)]
Offset = Annotated[int, Query(ge=0, le=INT_MAX)]


def no_nul_in_url(request: Request) -> None:
    """Refuse a path or query holding a NUL character (a router-wide dependency).

    Raises:
        ServerAPIError: 422 ``invalid_request``.
    """
    if "\x00" in request.url.path or any(
            "\x00" in key or "\x00" in value for key, value in request.query_params.multi_items()):
        raise ServerAPIError("the URL holds a NUL character", "invalid_request", 422)
