"""``GET /v1/me``: the gateway says who a token is, from the token alone, after the same
authentication, rate limit, metrics and access log as every ``/v1`` request."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import jwt

from forge_dev.stack import free_port
from forge_dev.testing import Platform

from .conftest import start_gateway
from .test_auth import assert_401

ME = "/v1/me"


def _user() -> str:
    return f"me-{uuid.uuid4().hex[:8]}@acme.io"


def _expiry(token: str) -> str:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return dt.datetime.fromtimestamp(exp, dt.UTC).isoformat().replace("+00:00", "Z")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_developer_token_is_described_with_its_names_roles_and_expiry(platform: Platform) -> None:
    sub = _user()
    token = platform.keys.sign(sub, ["developer"], extra={"name": "Dana Developer"})
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get(ME, headers=_bearer(token))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "subject": sub,
        "identity": sub,
        "name": "Dana Developer",
        "email": sub,
        "username": sub,
        "roles": ["developer"],
        "service_account": False,
        "repository": None,
        "issuer": platform.issuer_url,
        "expires_at": _expiry(token),
    }
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-request-id"]
    # Counted against the user's rate limit like any other request.
    assert resp.headers["x-ratelimit-limit"] == "1000"
    assert resp.headers["x-ratelimit-remaining"] == "999"


async def test_a_viewer_and_a_service_account_token(platform: Platform) -> None:
    sub = _user()
    viewer = platform.token(sub, "viewer")
    worker = platform.token("me-worker", service_account=True)
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        seen = (await client.get(ME, headers=_bearer(viewer))).json()
        assert (seen["subject"], seen["identity"], seen["name"], seen["roles"]) == (sub, sub, None, ["viewer"])
        assert seen["service_account"] is False
        assert seen["repository"] is None
        # No role is needed to ask who one is: a worker may, and is told it is one.
        resp = await client.get(ME, headers=_bearer(worker))
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert seen["service_account"] is True
    assert seen["roles"] == ["worker"]
    assert seen["email"] is None
    assert seen["identity"] == seen["username"] == "service-account-forge-worker"


async def test_a_repository_bound_token_names_its_repository(platform: Platform) -> None:
    sub = _user()
    token = platform.keys.sign(sub, ["developer"], extra={"forge_repository": "acme/app"})
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get(ME, headers=_bearer(token))
    assert resp.status_code == 200, resp.text
    assert resp.json()["repository"] == "acme/app"
    assert resp.json()["roles"] == ["developer"]


async def test_missing_expired_or_invalid_tokens_are_the_401_envelope(platform: Platform) -> None:
    expired = platform.token(_user(), "developer", expires_in=-120)
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        assert_401(await client.get(ME), "missing bearer token")
        assert_401(await client.get(ME, headers=_bearer(expired)), "expired")
        assert_401(await client.get(ME, headers=_bearer("not.a.jwt")), "malformed")
        assert_401(await client.get(ME, headers={"Authorization": "Basic dXNlcjpwdw=="}), "Bearer <token>")
        resp = await client.get(ME, headers=_bearer(expired))
    assert resp.json()["error"]["details"] == {}
    assert "x-request-id" in resp.headers


async def test_methods_metrics_and_access_log(platform: Platform) -> None:
    sub = _user()
    headers = {**platform.headers(sub, "viewer"), "X-Request-Id": f"me-{uuid.uuid4().hex}"}
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        head = await client.head(ME, headers=headers)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            resp = await client.request(method, ME, headers=headers)
            assert resp.status_code == 405, method
            assert resp.json()["error"]["code"] == "method_not_allowed"
            assert resp.headers["allow"] == "GET, HEAD"
        # Only the exact path: below it is an unknown route, after authentication as always.
        assert (await client.get(f"{ME}/roles", headers=headers)).status_code == 404
        assert (await client.get(f"{ME}/roles")).status_code == 401
        assert (await client.get(ME, headers=headers)).status_code == 200
        text = (await client.get("/metrics")).text
    assert 'forge_http_requests_total{method="GET",route="/v1/me",service="gateway",status="200"}' in text
    assert 'forge_http_request_errors_total{method="POST",route="/v1/me",service="gateway",status="405"}' in text

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # lines are flushed in batches, within 50 ms
        lines = [json.loads(line) for line in platform.logs("gateway").splitlines() if headers["X-Request-Id"] in line]
        mine = [line for line in lines if line["path"] == ME]
        if len(mine) >= 6 or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [(line["method"], line["status"]) for line in mine] == [
        ("HEAD", 200),
        ("POST", 405),
        ("PUT", 405),
        ("DELETE", 405),
        ("PATCH", 405),
        ("GET", 200),
    ]
    assert {(line["user"], line["upstream"]) for line in mine} == {(sub, "gateway")}


async def test_answers_with_every_service_down_and_is_rate_limited(platform: Platform) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {f"FORGE_{name}_URL": dead for name in ("PIPELINE", "RELEASE", "DEPLOYMENT", "APPROVAL")}
    gateway = await start_gateway(platform, {**env, "FORGE_RATE_LIMIT": "3", "FORGE_RATE_LIMIT_WINDOW": "60s"})
    headers = platform.headers(_user(), "developer")
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            down = await client.get("/v1/runs/00000000-0000-0000-0000-000000000000", headers=headers)
            assert down.status_code == 502, down.text  # the check `forge login` used to make
            seen: list[Any] = []
            for _ in range(2):
                resp = await client.get(ME, headers=headers)
                assert resp.status_code == 200, resp.text
                seen.append(resp.headers["x-ratelimit-remaining"])
            assert seen == ["1", "0"]  # one window for every /v1 request of the user
            refused = await client.get(ME, headers=headers)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["retry-after"]) >= 1
            # The token is still checked before the limit: a bad one is a 401, not a 429.
            assert_401(await client.get(ME, headers=_bearer("not.a.jwt")), "malformed")
    finally:
        gateway.stop()
