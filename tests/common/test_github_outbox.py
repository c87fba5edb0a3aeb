"""The GitHub outbox (forge_common.github) against real Postgres and a local server speaking the
GitHub API: calls go out in order per key, saved ids fill later paths, a call GitHub refuses for
good is given up and so are the calls that needed its answer, user text is sent as written."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from aiohttp import web

from forge_common.db import create_pool
from forge_common.github import OUTBOX_DDL, REPORTING, GitHubConfig, GitHubRequest, GitHubSender, enqueue
from forge_dev.stack import free_port
from forge_dev.testing import Platform


class GitHub:
    """Answers deployments with a new id (422 for the ref "refused") and records statuses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.url = ""

    async def deployment(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["ref"] == "refused":
            return web.json_response({"message": "No ref found"}, status=422)
        self.calls.append((request.path, body))
        return web.json_response({"id": 4242, **body}, status=201)

    async def status(self, request: web.Request) -> web.Response:
        self.calls.append((request.path, await request.json()))
        return web.json_response({"id": 1}, status=201)


@pytest.fixture
async def github() -> AsyncIterator[GitHub]:
    fake = GitHub()
    app = web.Application()
    app.router.add_post("/repos/{owner}/{repo}/deployments", fake.deployment)
    app.router.add_post("/repos/{owner}/{repo}/deployments/{id}/statuses", fake.status)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def schema(platform: Platform) -> AsyncIterator[str]:
    name = f"gh_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        await conn.execute(f'SET search_path TO "{name}"')
        await conn.execute(OUTBOX_DDL.encode())
    yield name
    async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def requests(ref: str, key: str) -> list[GitHubRequest]:
    saved = f"github:deployment:{key}"
    return [
        GitHubRequest(key, "/repos/acme/app/deployments", {"ref": ref}, save_as=saved),
        GitHubRequest(
            key,
            f"/repos/acme/app/deployments/${{{saved}}}/statuses",
            {"state": "failure", "description": "step said ${HOME} and ${unknown} $$", "log_url": "${public_url}/x"},
        ),
    ]


async def test_saved_ids_order_and_give_up(platform: Platform, github: GitHub, schema: str) -> None:
    pool = await create_pool(platform.database_url, 1, 2, "github-outbox-test")
    config = GitHubConfig(api_url=github.url, token="t", public_url="https://forge.example.com/", max_attempts=2)
    sender = GitHubSender(pool, schema, "test", config)
    try:
        async with pool.connection() as conn, conn.transaction():
            for request in requests("refused", "a") + requests("main", "b"):
                await enqueue(conn, schema, request)
        while await sender.tick() or await _due(pool, schema):
            await asyncio.sleep(0)  # each tick sends the next call of each key
        async with pool.connection() as conn:
            cur = await conn.execute(
                f'SELECT ordering_key, sent_at IS NOT NULL AS sent, skipped, last_error FROM "{schema}".github_outbox ORDER BY id'
            )
            rows = await cur.fetchall()
    finally:
        await sender.stop()
        await pool.close()
    # Key "b": created, then its status on the id GitHub gave it, user text untouched.
    assert github.calls == [
        ("/repos/acme/app/deployments", {"ref": "main"}),
        (
            "/repos/acme/app/deployments/4242/statuses",
            {
                "state": "failure",
                "description": "step said ${HOME} and ${unknown} $$",
                "log_url": "https://forge.example.com/x",
            },
        ),
    ]
    # Key "a": GitHub refused the creation (422, not retried), so its status has no id to go to.
    assert [(r["ordering_key"], r["sent"], r["skipped"]) for r in rows] == [
        ("a", False, True),
        ("a", False, True),
        ("b", True, False),
        ("b", True, False),
    ]
    assert rows[0]["last_error"].startswith("HTTP 422")
    assert "github:deployment:a" in rows[1]["last_error"]


async def _due(pool: Any, schema: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f'SELECT count(*) AS n FROM "{schema}".github_outbox WHERE sent_at IS NULL AND NOT skipped'
        )
        row = await cur.fetchone()
    return bool(row and row["n"])


def test_save_as_names_start_with_github() -> None:
    with pytest.raises(ValueError, match="github:"):
        GitHubRequest("k", "/x", {}, save_as="deployment:1")


async def test_nothing_is_queued_when_the_service_does_not_report(platform: Platform, schema: str) -> None:
    """A service without a token (its pool's context says it does not report) writes no rows:
    the table does not grow by the rows of every run, to be skipped and purged later."""
    request = GitHubRequest("run:x", "/repos/acme/app/statuses/abc", {"state": "pending"})
    for reporting, rows in ((False, 0), (True, 1)):
        pool = await create_pool(platform.database_url, 1, 1, "gh-test", context={REPORTING: reporting})
        try:
            async with pool.connection() as conn, conn.transaction():
                await enqueue(conn, schema, request)
                cur = await conn.execute(f'SELECT count(*) AS n FROM "{schema}".github_outbox')
                assert (await cur.fetchone())["n"] == rows
                await conn.execute(f'DELETE FROM "{schema}".github_outbox')
        finally:
            await pool.close()
