"""Fixtures of the release tests: one base URL (switch it here to go through another hop),
HTTP clients per role, and helpers that build valid requests with unique names."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.testing import Platform

from ._support import Api


@pytest.fixture(scope="session")
def base_url(platform: Platform) -> str:
    """Where the tests send requests: the gateway, as a client would."""
    return platform.gateway_url


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


# A fresh identity per test: the gateway rate-limits per user (1000 requests per minute), and
# the whole session shares one platform.
def _user(http: httpx.AsyncClient, base_url: str, platform: Platform, role: str) -> Api:
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    return Api(http, base_url, platform.headers(email, role), email)


@pytest.fixture
def developer(http: httpx.AsyncClient, base_url: str, platform: Platform) -> Api:
    return _user(http, base_url, platform, "developer")


@pytest.fixture
def viewer(http: httpx.AsyncClient, base_url: str, platform: Platform) -> Api:
    return _user(http, base_url, platform, "viewer")


@pytest.fixture
def worker(http: httpx.AsyncClient, base_url: str, platform: Platform) -> Api:
    sub = f"worker-{uuid.uuid4().hex[:8]}"
    headers = platform.headers(sub, "worker", service_account=True)
    return Api(http, base_url, headers, "service-account-forge-worker")
