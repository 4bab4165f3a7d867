"""Small pure pieces of the dashboard pages."""

from __future__ import annotations

import pytest

from fleetup.server.dashboard._pages import _rollout_spec, _safe_next


@pytest.mark.parametrize(("target", "expected"), [
    ("/rollouts/3?tab=x", "/rollouts/3?tab=x"), ("/", "/"),
    ("//evil.example.com/", "/"), ("/\\evil.example.com", "/"), ("https://evil.example.com", "/"),
    ("evil", "/"), ("/\tx", "/"), ("", "/")])
def test_sign_in_only_returns_to_a_path_on_this_server(target: str, expected: str) -> None:
    assert _safe_next(target) == expected


def test_the_start_form_becomes_the_apis_rollout_spec() -> None:
    spec = _rollout_spec({"app": "hello", "version": "1.1", "channel": "beta",
                          "stages": "5, 50,100", "soak_seconds": "600", "min_reports": "3",
                          "max_failure_percent": "12.5", "group": "region=eu, hw=v2"})
    assert (spec.stages, spec.soak_seconds, spec.min_reports) == ([5.0, 50.0, 100.0], 600, 3)
    assert spec.max_failure_rate == 0.125
    assert spec.group == {"region": "eu", "hw": "v2"}
    with pytest.raises(ValueError, match="TAG=VALUE"):
        _rollout_spec({"app": "hello", "version": "1.1", "channel": "beta", "stages": "100",
                       "soak_seconds": "0", "min_reports": "0", "max_failure_percent": "5",
                       "group": "region"})
