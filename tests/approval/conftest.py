"""Fixtures of the approval tests: a client on the platform's public entry, releases to approve."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform


@pytest.fixture(scope="session")
def api_url(platform: Platform) -> Callable[[str], str]:
    """Base URL that serves the routes of ``service`` for a client: always the gateway."""

    def url(service: str) -> str:
        return platform.gateway_url

    return url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def unique_user(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture(scope="session")
def short_ttl_approval_url(platform: Platform) -> str:
    """A second approval instance whose approvals last 2 s (FORGE_APPROVAL_TTL=2s)."""
    return platform.start_process("approval", env={"FORGE_APPROVAL_TTL": "2s"}).url


CreateRelease = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def create_release(platform: Platform, http: httpx.AsyncClient, api_url: Callable[[str], str]) -> CreateRelease:
    """Publish a release (through POST /v1/releases) created by ``creator``; returns its body."""

    async def create(creator: str | None = None, *roles: str) -> dict[str, Any]:
        creator = creator or unique_user("dev")
        repository = f"acme/approvals-{uuid.uuid4().hex[:8]}"
        resp = await http.post(
            f"{api_url('release')}/v1/releases",
            headers=platform.headers(creator, *(roles or ("developer",))),
            json={
                "repository": repository,
                "project": "api",
                "commit_sha": uuid.uuid4().hex + uuid.uuid4().hex[:8],
                "artifacts": [],
            },
        )
        assert resp.status_code == 201, resp.text
        body: dict[str, Any] = resp.json()
        body |= {"created_by": creator, "repository": repository, "project": "api"}
        return body

    return create
