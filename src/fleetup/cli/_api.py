"""The operator commands' HTTP client for the fleet server's REST API.

Reads the operator token from ``FLEETUP_TOKEN``; maps transport failures to
:class:`~fleetup.errors.NetworkError` and the server's JSON errors to
:class:`~fleetup.errors.ServerAPIError` (with the server's code), once, here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from fleetup.errors import NetworkError, ServerAPIError, UsageError

__all__ = ["operator_client", "request_json"]

TOKEN_ENV = "FLEETUP_TOKEN"  # noqa: S105 - the name of a variable, not a secret


@contextmanager
def operator_client(server: str, timeout: float = 60.0) -> Iterator[httpx.Client]:
    """An httpx client for ``server`` carrying the operator token.

    Raises:
        UsageError: ``FLEETUP_TOKEN`` is not set.
    """
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(f"set {TOKEN_ENV} to an operator token "
                         "(`fleetup admin token create --role ...`)")
    with httpx.Client(base_url=server.rstrip("/"), timeout=timeout,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def request_json(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """Send one request and return the decoded JSON answer.

    Raises:
        NetworkError: the server could not be reached or the connection failed.
        ServerAPIError: the server answered an error (its code and message).
    """
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as e:
        raise NetworkError(f"cannot reach the fleet server {client.base_url}: {e}") from e
    if response.status_code >= 400:
        raise _api_error(response)
    try:
        return response.json()
    except ValueError as e:
        raise ServerAPIError(f"the server answered {response.status_code} without JSON",
                             "bad_response", response.status_code) from e


def _api_error(response: httpx.Response) -> ServerAPIError:
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:200]
    retry = response.headers.get("Retry-After")
    return ServerAPIError(f"the server refused ({response.status_code} {code}): {message}",
                          code, response.status_code,
                          float(retry) if retry and retry.isdigit() else None)
