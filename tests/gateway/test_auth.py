"""The gateway refuses every token that is not a live token of the platform's issuer (401
envelopes), and follows a key rotation at the identity provider."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from . import tokens
from .conftest import start_gateway, upstream_env
from .upstreams import JwksServer, Server

PATH = "/v1/runs?repository=o/r"


def assert_401(resp: httpx.Response, message_part: str) -> None:
    assert resp.status_code == 401, resp.text
    error = resp.json()["error"]
    assert error["code"] == "authentication_failed"
    assert message_part in error["message"]
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.headers["content-type"] == "application/json"


async def test_missing_or_malformed_authorization_is_401(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        assert_401(await client.get(PATH), "missing bearer token")
        assert_401(await client.get(PATH, headers={"Authorization": "Basic dXNlcjpwdw=="}), "Bearer <token>")
        assert_401(await client.get(PATH, headers={"Authorization": "Bearer"}), "Bearer <token>")
        assert_401(await client.get(PATH, headers={"Authorization": "Bearer not.a.jwt"}), "malformed")


async def test_expired_token_is_401(platform: Platform) -> None:
    token = platform.token("late@example.com", "admin", expires_in=-120)
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        assert_401(await client.get(PATH, headers={"Authorization": f"Bearer {token}"}), "expired")


async def test_token_from_another_issuer_is_401(platform: Platform) -> None:
    key = tokens.new_rsa_key()
    foreign = tokens.signed(key, "foreign-kid", tokens.claims("https://evil.example.com/realms/forge"))
    # Same kid and issuer as the platform, but signed by someone else's key.
    forged = tokens.signed(key, tokens.platform_kid(platform), tokens.claims(platform.issuer_url))
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        assert_401(await client.get(PATH, headers={"Authorization": f"Bearer {foreign}"}), "unknown key")
        assert_401(await client.get(PATH, headers={"Authorization": f"Bearer {forged}"}), "invalid token")


async def test_platform_key_with_wrong_issuer_or_audience_is_401(platform: Platform) -> None:
    # Signed with the platform's real key, so only the claims are wrong.
    other_issuer = platform.keys.sign("a@example.com", ["admin"], extra={"iss": "https://other.example.com/realms/x"})
    other_audience = platform.keys.sign("a@example.com", ["admin"], extra={"aud": ["billing"], "azp": "billing"})
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        assert_401(await client.get(PATH, headers={"Authorization": f"Bearer {other_issuer}"}), "another issuer")
        assert_401(await client.get(PATH, headers={"Authorization": f"Bearer {other_audience}"}), "not meant")


async def test_alg_none_is_401(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get(PATH, headers={"Authorization": f"Bearer {tokens.unsigned(platform)}"})
        assert_401(resp, "'none' is not accepted")


async def test_hs256_signed_with_the_public_key_is_401(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get(PATH, headers={"Authorization": f"Bearer {tokens.hs256_with_public_key(platform)}"})
        assert_401(resp, "'HS256' is not accepted")


async def test_valid_token_passes_the_gateway(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get(PATH, headers=platform.headers("viewer@example.com", "viewer"))
        # Whatever the pipeline answers, it is the pipeline's answer, not the gateway's 401.
        assert resp.status_code != 401, resp.text
        assert resp.headers["x-ratelimit-limit"] == "1000"
        if resp.status_code >= 400:
            assert set(resp.json()["error"]) == {"code", "message", "details"}


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.server.start()
    yield server
    await server.server.stop()


async def test_jwks_rotation_new_kid_accepted_after_refresh(
    platform: Platform, jwks: JwksServer, echo_servers: dict[str, Server]
) -> None:
    old_key, new_key = tokens.new_rsa_key(), tokens.new_rsa_key()
    old_kid, new_kid = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    jwks.keys = [tokens.public_jwk(old_key, old_kid)]
    gateway: Process = await start_gateway(
        platform,
        {
            **upstream_env(echo_servers),
            "FORGE_OIDC_ISSUER": jwks.issuer,
            "FORGE_JWKS_REFRESH_INTERVAL": "1s",
        },
    )

    def bearer(key: tokens.rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.signed(key, kid, tokens.claims(jwks.issuer))}"}

    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            resp = await client.get("/v1/runs", headers=bearer(old_key, old_kid))
            assert resp.status_code == 200, resp.text
            fetches_before = jwks.fetches

            # The identity provider rotates: only the new key is published from now on.
            jwks.keys = [tokens.public_jwk(new_key, new_kid)]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                resp = await client.get("/v1/runs", headers=bearer(new_key, new_kid))
                if resp.status_code == 200:
                    break
                assert_401(resp, "unknown key")  # only until the (rate-limited) refresh happens
                assert loop.time() < deadline, "new key never accepted"
                await asyncio.sleep(0.1)
            assert jwks.fetches > fetches_before

            # The retired key is gone with the refresh: fresh tokens signed with it are refused.
            assert_401(await client.get("/v1/runs", headers=bearer(old_key, old_kid)), "unknown key")

            # Unknown kids do not turn into a JWKS fetch per request.
            fetches = jwks.fetches
            stranger = tokens.new_rsa_key()
            for _ in range(20):
                resp = await client.get("/v1/runs", headers=bearer(stranger, f"k-{uuid.uuid4().hex}"))
                assert resp.status_code == 401
            assert jwks.fetches - fetches <= 3
    finally:
        gateway.stop()


async def test_id_and_refresh_tokens_are_not_access_tokens(platform: Platform) -> None:
    # Same realm, same signing key, same audience: only `typ` tells Keycloak's token kinds apart.
    id_token = platform.keys.sign("a@example.com", ["admin"], extra={"typ": "ID"})
    refresh = platform.keys.sign("a@example.com", ["admin"], extra={"typ": "Refresh"})
    untyped = platform.keys.sign("a@example.com", ["admin"], extra={"typ": None})
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        for token in (id_token, refresh, untyped):
            assert_401(await client.get(PATH, headers={"Authorization": f"Bearer {token}"}), "not an access token")
        # The services check on their own (the gateway is not trusted behind it).
        resp = await client.get(
            f"{platform.service_url('approval')}/v1/approvals/00000000-0000-0000-0000-000000000000",
            headers={"Authorization": f"Bearer {id_token}"},
        )
        assert_401(resp, "not an access token")
