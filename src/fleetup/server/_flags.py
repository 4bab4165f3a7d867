"""Feature flags: per app, a value by default, by channel, by group (a tag) and by
device; the most specific wins (device > group > channel > default).

Flags are configuration the server hands the app, not signed code: they travel in the
check-in answer's ``flags`` field, which the decision (:func:`_rollouts.decide`) never
reads and the agent never acts on, so no flag can choose what is installed whatever it
is named. Values are JSON scalars of bounded size, names are short, and an app has a
bounded number of them, so an answer stays small.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetup.errors import ServerAPIError
from fleetup.server import _crud
from fleetup.server._models import FeatureFlag, utcnow

__all__ = ["FlagScalar", "FlagValue", "delete_flag", "list_flags", "load_flags", "resolve",
           "scope_of", "set_flag"]

FlagScalar = str | int | float | bool
MAX_FLAGS_PER_APP = 200
MAX_STRING = 1000
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# Most specific first: the order :func:`resolve` tries scopes in.
SCOPES = ("device", "group", "channel", "default")


@dataclass(frozen=True, slots=True)
class FlagValue:
    """One stored value: ``scope`` is one of :data:`SCOPES`; ``key`` the channel, the
    ``tag=value`` or the device id (``""`` for the default)."""

    app: str
    name: str
    scope: str
    key: str
    value: FlagScalar


def check_value(value: object) -> FlagScalar:
    """The value if it is a bounded JSON scalar.

    Raises:
        ServerAPIError: (422) anything else (objects, lists, null, huge numbers).
    """
    if isinstance(value, bool | str) or (isinstance(value, int) and abs(value) <= 2**53):
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ServerAPIError(f"a flag's text is at most {MAX_STRING} characters",
                                 "bad_flag", 422)
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ServerAPIError("a flag's value is a string, a number (at most 2**53) or a "
                         "boolean", "bad_flag", 422)


def scope_of(channel: str | None, group: str | None, device: str | None) -> tuple[str, str]:
    """``(scope, key)`` from at most one of the three (none: the default).

    Raises:
        ServerAPIError: (422) more than one, or a group that is not ``TAG=VALUE``.
    """
    given = [(s, k) for s, k in (("channel", channel), ("group", group), ("device", device))
             if k is not None]
    if len(given) > 1:
        raise ServerAPIError("give at most one of channel, group and device", "bad_flag", 422)
    if not given:
        return "default", ""
    scope, key = given[0]
    if not key or len(key) > 200 or (scope == "group" and not re.fullmatch(r"[^=]+=.*", key)):
        raise ServerAPIError(f"bad {scope} {key!r}" + (" (TAG=VALUE)" if scope == "group"
                                                       else ""), "bad_flag", 422)
    return scope, key


def resolve(values: Iterable[FlagValue], *, device_id: str, channel: str,
            tags: Mapping[str, str]) -> dict[str, FlagScalar]:
    """Each flag's value for one device. Of several matching groups the smallest
    ``tag=value`` wins, so the answer does not depend on storage order."""
    rank = {scope: i for i, scope in enumerate(SCOPES)}
    best: dict[str, tuple[int, str, FlagScalar]] = {}
    for v in values:
        if not _applies(v, device_id, channel, tags):
            continue
        mine = (rank[v.scope], v.key, v.value)
        if v.name not in best or mine[:2] < best[v.name][:2]:
            best[v.name] = mine
    return {name: value for name, (_, _, value) in sorted(best.items())}


def _applies(v: FlagValue, device_id: str, channel: str, tags: Mapping[str, str]) -> bool:
    if v.scope == "device":
        return v.key == device_id
    if v.scope == "group":
        tag, _, wanted = v.key.partition("=")
        return tags.get(tag) == wanted
    return v.key == channel if v.scope == "channel" else v.scope == "default"


def _of(row: FeatureFlag) -> FlagValue:
    value = row.value.get("value")
    return FlagValue(row.app, row.name, row.scope, row.scope_key,
                     value if isinstance(value, str | int | float) else str(value))


def load_flags(session: Session) -> dict[str, list[FlagValue]]:
    """Every app's flag values, for the check-in cache."""
    result: dict[str, list[FlagValue]] = {}
    for row in session.scalars(select(FeatureFlag)):
        result.setdefault(row.app, []).append(_of(row))
    return result


def list_flags(session: Session, *, app: str) -> Sequence[FeatureFlag]:
    return session.scalars(select(FeatureFlag).where(FeatureFlag.app == app)
                           .order_by(FeatureFlag.name, FeatureFlag.scope,
                                     FeatureFlag.scope_key)).all()


def _find(session: Session, app: str, name: str, scope: str, key: str
          ) -> FeatureFlag | None:
    return session.scalars(select(FeatureFlag).where(
        FeatureFlag.app == app, FeatureFlag.name == name, FeatureFlag.scope == scope,
        FeatureFlag.scope_key == key)).first()


def set_flag(session: Session, *, app: str, name: str, scope: str, key: str,
             value: object, actor: str) -> FeatureFlag:
    """Set one value (audited); the caller commits.

    Raises:
        ServerAPIError: (422) a bad name or value; (409) the app has too many flags.
    """
    if not _NAME.fullmatch(name):
        raise ServerAPIError(f"bad flag name {name!r} (a letter, then up to 63 letters, "
                             "digits, '_', '.', '-')", "bad_flag", 422)
    checked = check_value(value)
    row = _find(session, app, name, scope, key)
    if row is None:
        if len(list_flags(session, app=app)) >= MAX_FLAGS_PER_APP:
            raise ServerAPIError(f"{app} has {MAX_FLAGS_PER_APP} flag values already",
                                 "too_many_flags", 409)
        row = FeatureFlag(app=app, name=name, scope=scope, scope_key=key)
        session.add(row)
    before = None if row.value is None else row.value.get("value")
    row.value, row.updated_at, row.updated_by = {"value": checked}, utcnow(), actor
    _crud.add_audit(session, actor=actor, action="flag.set", target=f"flag:{app}/{name}",
                    details={"scope": scope, "key": key, "from": before, "to": checked})
    return row


def delete_flag(session: Session, *, app: str, name: str, scope: str, key: str,
                actor: str) -> None:
    """Remove one value (audited); the caller commits.

    Raises:
        ServerAPIError: (404) no such value.
    """
    row = _find(session, app, name, scope, key)
    if row is None:
        raise ServerAPIError(f"no value of {name!r} for {scope} {key!r}".replace(" ''", ""),
                             "unknown_flag", 404)
    _crud.add_audit(session, actor=actor, action="flag.unset", target=f"flag:{app}/{name}",
                    details={"scope": scope, "key": key, "was": row.value.get("value")})
    session.delete(row)
