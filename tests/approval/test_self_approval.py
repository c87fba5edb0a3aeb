"""Separation of duties on stable identities, through the gateway: the token's subject for
Forge users, and for a webhook run's author the GitHub user id, matched against the approver
token's FORGE_GITHUB_ID_CLAIM claim (default ``github_id``). Display names decide nothing."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _headers(platform: Platform, sub: str, *roles: str, **claims: Any) -> dict[str, str]:
    token = platform.keys.sign(sub, list(roles), extra=claims or None)
    return {"Authorization": f"Bearer {token}"}


async def _release(http: httpx.AsyncClient, platform: Platform, headers: dict[str, str], **extra: Any) -> str:
    resp = await http.post(
        f"{platform.gateway_url}/v1/releases",
        json={
            "repository": f"acme/self-{uuid.uuid4().hex[:8]}",
            "project": "api",
            "commit_sha": secrets.token_hex(20),
            **extra,
        },
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    release_id: str = resp.json()["id"]
    return release_id


async def _approve(
    http: httpx.AsyncClient, platform: Platform, release_id: str, headers: dict[str, str]
) -> httpx.Response:
    return await http.post(
        f"{platform.gateway_url}/v1/approvals",
        json={"release_id": release_id, "environment": "production", "justification": "CAB-7"},
        headers=headers,
    )


def _refused_as_self_approval(resp: httpx.Response) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["details"]["reason"] == "self_approval"


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


async def test_the_creator_is_recognised_by_subject_whatever_their_display_name(
    platform: Platform, http: httpx.AsyncClient
) -> None:
    sub = f"user-{uuid.uuid4().hex[:8]}"
    creator = _headers(platform, sub, "developer", "approver", email=f"{sub}@acme.io")
    release_id = await _release(http, platform, creator)
    # The same account after an email change: still the creator.
    renamed = _headers(platform, sub, "approver", email=f"{sub}.new@acme.io", preferred_username="someone-else")
    _refused_as_self_approval(await _approve(http, platform, release_id, renamed))
    # Another account that happens to show the creator's email: not the creator.
    lookalike = _headers(platform, f"other-{uuid.uuid4().hex[:8]}", "approver", email=f"{sub}@acme.io")
    assert (await _approve(http, platform, release_id, lookalike)).status_code == 201


async def test_the_author_of_a_webhook_run_is_recognised_by_github_id(
    platform: Platform, http: httpx.AsyncClient
) -> None:
    github_id = str(10_000_000 + secrets.randbelow(10_000_000))
    worker = platform.headers(f"worker-{uuid.uuid4().hex[:8]}", "worker", service_account=True)
    trigger = {
        "trigger_type": "branch_push",
        "branch": "main",
        "triggered_by": "octocat",  # the GitHub login the webhook named
        "triggered_by_id": f"github:{github_id}",
    }
    release_id = await _release(http, platform, worker, trigger=trigger)
    # The pusher's Forge account, whose token carries their GitHub id (as a number or a string).
    for claim in (int(github_id), github_id):
        pusher = _headers(platform, f"user-{uuid.uuid4().hex[:8]}", "approver", github_id=claim)
        _refused_as_self_approval(await _approve(http, platform, release_id, pusher))
    # Someone whose username is the same login but who is another GitHub user may approve.
    namesake = _headers(
        platform, f"user-{uuid.uuid4().hex[:8]}", "approver", preferred_username="octocat", github_id=github_id + "1"
    )
    assert (await _approve(http, platform, release_id, namesake)).status_code == 201
