"""Workload identity: a GitHub Actions job's OIDC token exchanged (RFC 8693) at the gateway for
a short-lived Forge token bound to the job's repository, used through the gateway.

The issuer is a local HTTP server standing in for GitHub's (real JWKS over HTTP); the gateway
is the session platform's, started with ``FORGE_TRUSTED_ISSUERS`` naming it. Every service
behind it checks the exchanged token itself.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .oidc_issuer import LocalIssuer

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture
async def gateway(workload_gateway: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=workload_gateway.url, timeout=30.0) as client:
        yield client


def repository() -> str:
    return f"acme-{uuid.uuid4().hex[:8]}/app"


async def exchange(gateway: httpx.AsyncClient, subject_token: str, **overrides: str) -> httpx.Response:
    form = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": JWT_TYPE, **overrides}
    return await gateway.post("/v1/auth/token", data=form)


async def forge_token(gateway: httpx.AsyncClient, subject_token: str) -> str:
    resp = await exchange(gateway, subject_token)
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def run_body(repo: str) -> dict[str, Any]:
    return {"repository": repo, "branch": "main", "commit_sha": secrets.token_hex(20), "trigger_type": "manual"}


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code, error
    return error


async def test_a_job_token_is_exchanged_and_acts_on_its_own_repository_only(
    gateway: httpx.AsyncClient, github_oidc: LocalIssuer, platform: Platform
) -> None:
    own, other = repository(), repository()
    resp = await exchange(gateway, github_oidc.job_token(own))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    answer = resp.json()
    assert answer["token_type"] == "Bearer"
    assert answer["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert 0 < answer["expires_in"] <= 900
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert claims["forge_repository"] == own
    assert claims["realm_access"]["roles"] == ["developer"]
    assert claims["exp"] - claims["iat"] <= 900
    assert claims["sub"] == f"repo:{own}:ref:refs/heads/main"
    headers = {"Authorization": f"Bearer {answer['access_token']}"}

    # Its own repository: the run is created (the pipeline service verified the token itself).
    created = await gateway.post("/v1/runs", json=run_body(own), headers=headers)
    assert created.status_code == 201, created.text
    run = await gateway.get(f"/v1/runs/{created.json()['id']}", headers=headers)
    assert run.status_code == 200, run.text
    assert run.json()["triggered_by"] == f"repo:{own}:ref:refs/heads/main"
    listed = await gateway.get("/v1/runs", headers=headers)
    assert listed.status_code == 200, listed.text
    assert {r["repository"] for r in listed.json()["runs"]} == {own}

    # Another repository: refused by every service, and nothing was created.
    error = assert_error(
        await gateway.post("/v1/runs", json=run_body(other), headers=headers), 403, "authorization_failed"
    )
    assert error["details"] == {"token_repository": own, "repository": other}
    assert_error(await gateway.get(f"/v1/runs?repository={other}", headers=headers), 403, "authorization_failed")
    foreign = await gateway.post("/v1/runs", json=run_body(other), headers=platform.headers("dev@acme.io", "developer"))
    assert foreign.status_code == 201, foreign.text
    assert_error(await gateway.get(f"/v1/runs/{foreign.json()['id']}", headers=headers), 403, "authorization_failed")
    assert_error(await gateway.delete(f"/v1/runs/{foreign.json()['id']}", headers=headers), 403, "authorization_failed")
    events = f"/v1/runs/{foreign.json()['id']}/events"
    assert_error(await gateway.get(events, headers=headers), 403, "authorization_failed")
    assert_error(await gateway.get(f"/v1/events?repository={other}", headers=headers), 403, "authorization_failed")
    other_runs = await gateway.get(f"/v1/runs?repository={other}", headers=platform.headers("dev@acme.io", "viewer"))
    assert other_runs.json()["total"] == 1

    release = {"repository": other, "project": "api", "commit_sha": secrets.token_hex(20), "artifacts": []}
    assert_error(await gateway.post("/v1/releases", json=release, headers=headers), 403, "authorization_failed")
    assert_error(await gateway.get(f"/v1/releases/{other}/api", headers=headers), 403, "authorization_failed")
    assert_error(await gateway.get(f"/v1/deployments/dev/{other}/api", headers=headers), 403, "authorization_failed")
    mine = await gateway.post("/v1/releases", json={**release, "repository": own}, headers=headers)
    assert mine.status_code == 201, mine.text
    theirs = await gateway.post("/v1/releases", json=release, headers=platform.headers("dev@acme.io", "developer"))
    assert theirs.status_code == 201, theirs.text
    deploy = {"release_id": theirs.json()["id"], "environment": "dev"}
    assert_error(await gateway.post("/v1/deployments", json=deploy, headers=headers), 403, "authorization_failed")
    assert_error(await gateway.get(f"/v1/releases/{theirs.json()['id']}", headers=headers), 403, "authorization_failed")
    approval = f"/v1/approvals/{theirs.json()['id']}/production"
    assert_error(await gateway.get(approval, headers=headers), 403, "authorization_failed")
    # Its own release: no approval yet, and it may ask.
    assert_error(
        await gateway.get(f"/v1/approvals/{mine.json()['id']}/production", headers=headers), 404, "resource_not_found"
    )


async def test_me_says_which_repository_an_exchanged_token_is_bound_to(
    gateway: httpx.AsyncClient, github_oidc: LocalIssuer
) -> None:
    own = repository()
    token = await forge_token(gateway, github_oidc.job_token(own))
    claims = jwt.decode(token, options={"verify_signature": False})
    resp = await gateway.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    me = resp.json()
    subject = f"repo:{own}:ref:refs/heads/main"
    assert (me["subject"], me["identity"], me["repository"], me["roles"]) == (subject, subject, own, ["developer"])
    assert (me["name"], me["email"], me["username"]) == (None, None, None)
    assert me["service_account"] is False
    assert me["issuer"] == claims["iss"]  # the gateway's workload issuer, not the realm


async def test_rules_decide_the_role(gateway: httpx.AsyncClient, github_oidc: LocalIssuer) -> None:
    own = repository()
    # A tag build matches the second rule: a viewer, who may read but not create runs.
    token = await forge_token(gateway, github_oidc.job_token(own, ref="refs/tags/v1.0.0"))
    headers = {"Authorization": f"Bearer {token}"}
    assert (await gateway.get("/v1/runs", headers=headers)).status_code == 200
    assert_error(await gateway.post("/v1/runs", json=run_body(own), headers=headers), 403, "authorization_failed")
    # No rule matches a feature branch, nor a repository outside acme-*.
    for subject in (github_oidc.job_token(own, ref="refs/heads/feature"), github_oidc.job_token("evil/app")):
        assert_error(await exchange(gateway, subject), 403, "authorization_failed")


async def test_untrusted_subject_tokens_are_refused(gateway: httpx.AsyncClient, github_oidc: LocalIssuer) -> None:
    own = repository()
    expired = github_oidc.job_token(own, expires_in=-120)
    error = assert_error(await exchange(gateway, expired), 401, "authentication_failed")
    assert "expired" in error["message"]
    foreign_audience = github_oidc.job_token(own, audience="https://github.com/acme")
    error = assert_error(await exchange(gateway, foreign_audience), 401, "authentication_failed")
    assert "audience" in error["message"]
    unknown_issuer = github_oidc.job_token(own, issuer="https://token.actions.example.net")
    error = assert_error(await exchange(gateway, unknown_issuer), 401, "authentication_failed")
    assert "does not trust" in error["message"]
    # Right issuer and claims, wrong key (a forger without the issuer's private key).
    forged = github_oidc.job_token(own, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert_error(await exchange(gateway, forged), 401, "authentication_failed")
    assert_error(await exchange(gateway, "not-a-jwt"), 401, "authentication_failed")


async def test_malformed_exchanges_are_400(gateway: httpx.AsyncClient, github_oidc: LocalIssuer) -> None:
    subject = github_oidc.job_token(repository())
    assert_error(await exchange(gateway, subject, grant_type="client_credentials"), 400, "invalid_request")
    assert_error(await exchange(gateway, subject, subject_token_type="urn:x"), 400, "invalid_request")
    assert_error(await exchange(gateway, ""), 400, "invalid_request")
    as_json = await gateway.post("/v1/auth/token", json={"grant_type": GRANT, "subject_token": subject})
    assert_error(as_json, 400, "invalid_request")


async def test_the_platform_gateway_without_trusted_issuers_has_no_exchange(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as client:
        resp = await client.post("/v1/auth/token", data={"grant_type": GRANT})
        assert_error(resp, 404, "resource_not_found")
        jwks = await client.get("/.well-known/jwks.json")
        assert jwks.status_code == 200
        assert jwks.json()["keys"][0]["use"] == "sig"
