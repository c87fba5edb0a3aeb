"""``{repo}`` as two segments or percent-encoded, read from the raw path."""

from __future__ import annotations

import pytest

from forge_common.errors import InvalidRequest, NotFound
from forge_deployment.domain import Target
from forge_deployment.paths import PREFIX, parse_target_path, raw_path_segments


def _parse(raw: str) -> tuple[Target, bool]:
    parsed = parse_target_path(raw_path_segments({"raw_path": raw.encode(), "path": "ignored"}, PREFIX))
    return parsed.target, parsed.history


@pytest.mark.parametrize(
    ("raw", "target", "history"),
    [
        ("/v1/deployments/dev/acme/shop/api", Target("dev", "acme/shop", "api"), False),
        ("/v1/deployments/dev/acme%2Fshop/api", Target("dev", "acme/shop", "api"), False),
        ("/v1/deployments/dev/acme%2fshop/api/", Target("dev", "acme/shop", "api"), False),
        ("/v1/deployments/production/acme/shop/api/history", Target("production", "acme/shop", "api"), True),
        ("/v1/deployments/staging/acme%2Fshop/api/history", Target("staging", "acme/shop", "api"), True),
        ("/v1/deployments/dev/acme%2Fshop/history", Target("dev", "acme/shop", "history"), False),
        ("/v1/deployments/dev/acme/shop/history", Target("dev", "acme/shop", "history"), False),
        ("/v1/deployments/dev/acme/shop/history/history", Target("dev", "acme/shop", "history"), True),
        ("/v1/deployments/dev/acme/shop/my%20api", Target("dev", "acme/shop", "my api"), False),
    ],
)
def test_parses_both_repo_forms(raw: str, target: Target, history: bool) -> None:
    assert _parse(raw) == (target, history)


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/deployments/dev",
        "/v1/deployments/dev/a",
        "/v1/deployments/dev/mono/web",
        "/v1/deployments/dev/a/b/c/d",
        "/v1/deployments/dev/a%2Fb/c/d",
        "/v1/deployments/dev/a/b/c/history/x",
        "/v1/deployments/dev//api",
    ],
)
def test_other_shapes_are_not_found(raw: str) -> None:
    with pytest.raises(NotFound):
        _parse(raw)


def test_unknown_environment_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest) as err:
        _parse("/v1/deployments/qa/acme/shop/api")
    assert err.value.details == {"field": "environment"}


def test_falls_back_to_the_decoded_path() -> None:
    parsed = parse_target_path(raw_path_segments({"path": "/v1/deployments/dev/acme/shop/api"}, PREFIX))
    assert parsed.target == Target("dev", "acme/shop", "api")


def test_badly_encoded_path_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest):
        _parse("/v1/deployments/dev/acme%ff/api")
