"""The identity provider down, and requests that carry two Authorization headers.

An unreachable key set is an outage (503 with Retry-After, the client should retry), not the
client's fault (401, the client would throw its token away); keys already cached keep working.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.stack import free_port
from forge_dev.testing import Platform
from tests.gateway import tokens
from tests.gateway.upstreams import JwksServer, Server, echo_app

UPSTREAMS = ("pipeline", "release", "deployment", "approval")


@pytest.fixture
async def echo() -> AsyncIterator[Server]:
    server = await Server(echo_app("echo")).start()
    yield server
    await server.stop()


async def test_identity_provider_down_is_503_for_unknown_keys_and_cached_keys_still_work(
    platform: Platform, echo: Server
) -> None:
    jwks = JwksServer()
    await jwks.server.start()
    key, kid = tokens.new_rsa_key(), f"k-{uuid.uuid4().hex[:6]}"
    jwks.keys = [tokens.public_jwk(key, kid)]
    env = {f"FORGE_{n.upper()}_URL": echo.url for n in UPSTREAMS}
    env.update({"FORGE_OIDC_ISSUER": jwks.issuer, "FORGE_JWKS_REFRESH_INTERVAL": "0s"})
    gateway = await asyncio.to_thread(platform.start_process, "gateway", env)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            known = {"Authorization": f"Bearer {tokens.signed(key, kid, tokens.claims(jwks.issuer))}"}
            assert (await client.get("/v1/runs", headers=known)).status_code == 200

            await jwks.server.stop()  # the identity provider goes away

            # A new key (the IdP rotated while down, or a token this gateway never saw).
            rotated, new_kid = tokens.new_rsa_key(), f"k-{uuid.uuid4().hex[:6]}"
            unknown = {"Authorization": f"Bearer {tokens.signed(rotated, new_kid, tokens.claims(jwks.issuer))}"}
            for _ in range(2):  # also once the failed fetch is remembered
                resp = await client.get("/v1/runs", headers=unknown)
                assert resp.status_code == 503, resp.text
                error = resp.json()["error"]
                assert error["code"] == "service_unavailable"
                assert error["details"]["dependency"] == "identity provider"
                assert int(resp.headers["retry-after"]) > 0
                assert "www-authenticate" not in resp.headers

            # A fresh token signed with the cached key is still verified locally.
            again = {"Authorization": f"Bearer {tokens.signed(key, kid, tokens.claims(jwks.issuer))}"}
            assert (await client.get("/v1/runs", headers=again)).status_code == 200
    finally:
        gateway.stop()


async def test_identity_provider_unreachable_at_a_service_is_503(platform: Platform) -> None:
    dead_issuer = f"http://127.0.0.1:{free_port()}/realms/forge"
    service = await asyncio.to_thread(platform.start_process, "approval", {"FORGE_OIDC_ISSUER": dead_issuer})
    try:
        token = platform.keys.sign("a@example.com", ["viewer"], extra={"iss": dead_issuer})
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            resp = await client.get(f"/v1/approvals/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "service_unavailable"
        assert resp.headers["retry-after"]
    finally:
        service.stop()


def two_authorizations(platform: Platform) -> list[tuple[str, str]]:
    # A viewer token first, an admin token last: the gateway used to check the last and the
    # service to act on the first.
    return [
        ("Authorization", f"Bearer {platform.token('viewer@example.com', 'viewer')}"),
        ("Authorization", f"Bearer {platform.token('admin@example.com', 'admin')}"),
    ]


@pytest.mark.parametrize("target", ["gateway", "approval service"])
async def test_two_authorization_headers_are_400(platform: Platform, target: str) -> None:
    base = platform.gateway_url if target == "gateway" else platform.service_url("approval")
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for method, path in (("GET", f"/v1/approvals/{uuid.uuid4()}"), ("POST", "/v1/approvals")):
            resp = await client.request(method, path, headers=two_authorizations(platform), json={})
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert error["code"] == "invalid_request"
            assert error["details"]["field"] == "Authorization"
