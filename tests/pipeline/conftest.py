"""Fixtures of the pipeline tests.

The shared platform's pipeline has its dispatcher on: runs created there get executed (and
fail in discovery, since no repository is reachable). Tests that need runs to stay where the
API puts them use an API-only pipeline instance (``FORGE_DISPATCHER_ENABLED=false``) on a
database of its own, with a gateway of its own in front, and a local HTTP server standing in
for the GitHub API. Events still go to the session's FORGE_EVENTS stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from aiohttp import web
from psycopg.rows import dict_row

from forge_dev.stack import Process, free_port
from forge_dev.testing import Platform

WEBHOOK_SECRET = "test-webhook-secret"
GITHUB_TOKEN = "ghp_test_token"


@dataclass
class FakeGitHub:
    """Stands in for api.github.com: records commit statuses; can fail the next N posts."""

    url: str = ""
    statuses: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    failures_served: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures_served += 1
            return web.json_response({"message": "Server Error"}, status=502)
        body = await request.json()
        self.statuses.append(
            {
                "owner": request.match_info["owner"],
                "repo": request.match_info["repo"],
                "sha": request.match_info["sha"],
                "authorization": request.headers.get("Authorization"),
                **body,
            }
        )
        self.changed.set()
        return web.json_response({"id": len(self.statuses), **body}, status=201)

    def for_sha(self, sha: str) -> list[dict[str, Any]]:
        return [s for s in self.statuses if s["sha"] == sha]

    async def wait_for(self, sha: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.for_sha(sha)) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"expected {count} statuses for {sha}, got {self.for_sha(sha)}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=left)
        return self.for_sha(sha)


@pytest.fixture(scope="session")
async def fake_github() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub()
    app = web.Application()
    app.router.add_post("/repos/{owner}/{repo}/statuses/{sha}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture(scope="session")
def pipeline_database(platform: Platform) -> Iterator[str]:
    """A database of its own for the API-only pipeline instance."""
    # Replace the URL's path only: the embedded server's URL carries a socket directory in its
    # query (postgresql://postgres:@/forge_test_x?host=/tmp/.../postgres).
    name = f"forge_pipeline_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(platform.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlsplit(platform.database_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(platform.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def api_pipeline(platform: Platform, pipeline_database: str, fake_github: FakeGitHub) -> Iterator[Process]:
    proc = platform.start_process(
        "pipeline",
        env={
            "FORGE_DATABASE_URL": pipeline_database,
            "FORGE_DISPATCHER_ENABLED": "false",
            "FORGE_GITHUB_API_URL": fake_github.url,
            "FORGE_GITHUB_TOKEN": GITHUB_TOKEN,
            "FORGE_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "FORGE_GITHUB_STATUS_POLL_INTERVAL": "0.05",
            "FORGE_PUBLIC_URL": "https://forge.example.com",
            "FORGE_DB_POOL_MIN": "1",
        },
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api_gateway(platform: Platform, api_pipeline: Process) -> Iterator[Process]:
    """A gateway in front of the API-only instance (rate limit and per-user concurrency raised:
    the suite sends thousands of requests as a handful of users, 150 of them at once)."""
    env = {"FORGE_PIPELINE_URL": api_pipeline.url, "FORGE_RATE_LIMIT": "1000000", "FORGE_USER_MAX_CONCURRENT": "1000"}
    proc = platform.start_process("gateway", env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def pipeline_url(api_gateway: Process) -> str:
    """Where the API tests send requests: through the gateway, as a client would. (To test the
    service directly, return ``api_pipeline.url`` here.)"""
    return api_gateway.url


@pytest.fixture
async def client(pipeline_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pipeline_url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="session")
async def db(pipeline_database: str, api_pipeline: Process) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection to the API-only instance's database, for building run trees through the
    service functions the dispatcher uses (autocommit off: wrap calls in ``transaction()``)."""
    conn = await psycopg.AsyncConnection.connect(pipeline_database, row_factory=dict_row)
    yield conn
    await conn.close()


def unique_repo() -> str:
    return f"forge-test/repo-{uuid.uuid4().hex[:12]}"


def unique_sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]
