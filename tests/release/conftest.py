"""Fixtures of the release tests: one base URL (switch it here to go through another hop),
HTTP clients per role, and helpers that build valid requests with unique names."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.testing import Platform

from ._support import Api


@pytest.fixture(scope="session")
def base_url(platform: Platform) -> str:
    """Where the tests send requests: the gateway, as a client would."""
    return platform.service_url("release")


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def developer(http: httpx.AsyncClient, base_url: str, platform: Platform) -> Api:
    return Api(http, base_url, platform.headers("dev@example.com", "developer"))


@pytest.fixture(scope="session")
def viewer(http: httpx.AsyncClient, base_url: str, platform: Platform) -> Api:
    return Api(http, base_url, platform.headers("viewer@example.com", "viewer"))


@pytest.fixture(scope="session")
def worker(http: httpx.AsyncClient, base_url: str, platform: Platform) -> Api:
    return Api(http, base_url, platform.headers("service-account-forge-worker", "worker", service_account=True))
