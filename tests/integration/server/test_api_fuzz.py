"""Every operation of the published OpenAPI document, fed generated junk: never a 5xx.

The operations come from the server's own ``/openapi.json`` (a new endpoint is fuzzed
without touching this file). Requests carry the token the operation needs (admin for
operator endpoints, a device token for ``/devices/`` ones) so that the fuzzing reaches
the handlers, not only the authentication. Bodies are arbitrary JSON, or objects built from
the operation's own schema with values that follow it or miss it by a little (a bound
plus or minus one, one character too many, a field left out, a value of another type):
NUL characters, huge integers, deep nesting, non-ASCII. Every answer below 500 must be a JSON error
with a code when it is an error. Runs against SQLite and PostgreSQL (NUL characters
and out-of-range integers are where PostgreSQL is stricter than SQLite).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.server.conftest import Fleet, build_fleet


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    body_schema: dict[str, Any] | None  # None: no JSON body


def _operations(spec: dict[str, Any]) -> list[Operation]:
    schemas = spec.get("components", {}).get("schemas", {})
    found = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            content = op.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            found.append(Operation(
                method.upper(), path,
                tuple(p["name"] for p in params if p["in"] == "path"),
                tuple(p["name"] for p in params if p["in"] == "query"),
                _resolve(body, schemas) if body is not None else None))
    return found


def _resolve(schema: Any, schemas: dict[str, Any]) -> Any:
    """``schema`` with every ``$ref`` replaced by what it points to."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _resolve(schemas[schema["$ref"].rsplit("/", 1)[-1]], schemas)
        return {k: _resolve(v, schemas) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, schemas) for v in schema]
    return schema


def _near(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that follow ``schema`` or miss it by a little: a bound plus or minus one,
    a string one longer than allowed, a wrong enum value, a field left out."""
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of([_near(s) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | SCALARS
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        longest = schema.get("maxLength", 60) + 1
        text = st.text(max_size=longest) | st.just("x" * longest)
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True) | text
        return text
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", -(2**70)), schema.get("maximum", 2**70)
        low = schema.get("exclusiveMinimum", low)
        high = schema.get("exclusiveMaximum", high)
        edges = st.sampled_from([low - 1, low, high, high + 1])
        ints = st.integers(int(low), int(high)) | edges
        floats = st.floats(allow_nan=False, allow_infinity=False)
        return ints if kind == "integer" else ints | floats
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = _near(schema.get("items", {}))
        return st.lists(items, max_size=min(schema.get("maxItems", 4) + 1, 6))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if not properties:
            return st.dictionaries(st.text(max_size=12), JSON, max_size=4)
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: _near(sub) for name, sub in properties.items() if name in required},
            optional={name: _near(sub) for name, sub in properties.items()
                      if name not in required})
    return JSON


SCALARS = (st.none() | st.booleans() | st.text(max_size=40)
           | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(["", "\x00", "1.0", "a\x00b", "../../etc", "2026-01-01T00:00:00Z",
                              "9" * 40, "stable", "admin", "é" * 300]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
SEGMENT = (st.integers(min_value=-(2**70), max_value=2**70).map(str)
           | st.text(min_size=1, max_size=30).map(lambda s: quote(s, safe="")))


@dataclass
class Target:
    client: httpx.Client
    device_token: str
    admin_token: str
    operations: list[Operation]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                               marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        db_url = f"sqlite:///{base / 'fleet.db'}"
    else:
        db_url = request.getfixturevalue("postgres_cluster").new_database()
    fleet: Fleet = build_fleet(base, db_url)
    try:
        device = fleet.device(version="1.0")
        with httpx.Client(base_url=fleet.server.url, timeout=30) as client:
            spec = client.get("/openapi.json").json()
            yield Target(client, device.token, fleet.tokens["admin"], _operations(spec))
    finally:
        fleet.server.stop()


@st.composite
def _requests(draw: st.DrawFn, operations: list[Operation]
              ) -> tuple[Operation, str, dict[str, str], Any]:
    op = draw(st.sampled_from(operations))
    path = op.path
    for name in op.path_params:
        segment = SEGMENT
        if op.method == "DELETE" and name == "token_id":  # never revoke the fuzzer's own
            segment = st.integers(min_value=1000).map(str) | st.text(
                alphabet=st.characters(categories=["L"]), min_size=1)
        path = path.replace("{" + name + "}", draw(segment))
    query = {name: draw(st.text(max_size=20) | SCALARS.map(str))
             for name in op.query_params if draw(st.booleans())}
    body: Any = None
    if op.body_schema is not None:
        body = draw(_near(op.body_schema) | JSON)
    return op, path, query, body


def test_no_input_makes_a_server_error(target: Target) -> None:
    assert len(target.operations) > 30  # the whole API is being fuzzed

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_requests(target.operations))
    def check(request: tuple[Operation, str, dict[str, str], Any]) -> None:
        op, path, query, body = request
        token = target.device_token if ("/devices/" in op.path and op.method == "POST") \
            or op.path == "/api/v1/devices/me" else target.admin_token
        response = target.client.request(
            op.method, path, params=query, headers={"Authorization": f"Bearer {token}"},
            **({"json": body} if op.body_schema is not None else {}))
        assert response.status_code < 500, (op.method, path, query, body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["code"], response.text

    check()
