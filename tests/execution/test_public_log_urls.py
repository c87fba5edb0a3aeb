"""Presigned log URLs address the public S3 endpoint and carry the session token.

The services reach S3 at ``FORGE_S3_URL`` (an internal address); clients cannot. With
``FORGE_S3_PUBLIC_URL`` set (here a TCP proxy to the same S3 server, standing in for its public
name) the ``logs_url`` a client gets through the gateway points there, is signed for that host,
and carries ``FORGE_S3_SESSION_TOKEN`` (temporary credentials) as ``X-Amz-Security-Token``; the
client downloads the step's log from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform
from tests.faults.proxy import TcpProxy

from .conftest import TERMINAL, Cell, steps_of

pytestmark = pytest.mark.slow

TOKEN = "FwoGZXIvYXdzEJr//session+token/=="  # characters that need encoding in a query


@pytest.fixture
async def public_s3(platform: Platform) -> AsyncIterator[TcpProxy]:
    target = urlsplit(platform.s3_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    await proxy.up()
    yield proxy
    await proxy.down()


@pytest.fixture
def lane(platform: Platform, public_s3: TcpProxy) -> Iterator[tuple[Cell, Process]]:
    cell = Cell(platform, "pubs3", env={"FORGE_S3_PUBLIC_URL": public_s3.url, "FORGE_S3_SESSION_TOKEN": TOKEN})
    gateway: Process | None = None
    try:
        pipeline = cell.start_pipeline()
        cell.start_worker()
        gateway = platform.start_process("gateway", env={"FORGE_PIPELINE_URL": pipeline.url})
        cell.wait_workers(1)
        yield cell, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        cell.close()


async def test_logs_url_uses_the_public_endpoint_and_the_session_token(
    lane: tuple[Cell, Process], public_s3: TcpProxy, platform: Platform
) -> None:
    cell, gateway = lane
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": "[phases.test]\ngroup = 1\n",
            "app/.forge/project.toml": 'name = "app"\n[[phases.test.steps]]\nname = "hello"\nrun = "echo hello public"\n',
        }
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        created = await client.post(
            "/v1/runs",
            json={"repository": repo.repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
            headers=cell.headers(),
        )
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        run: dict[str, Any] = {}
        for _ in range(600):
            run = (await client.get(f"/v1/runs/{run_id}", headers=cell.headers("viewer"))).json()
            if run["status"] in TERMINAL:
                break
            await asyncio.sleep(0.1)
        assert run["status"] == "success", run
        url = steps_of(run)[("test", "app", "hello")]["logs_url"]

        assert url.startswith(public_s3.url + "/"), url
        assert not url.startswith(platform.s3_url)
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Security-Token"] == [TOKEN]
        assert "host" in query["X-Amz-SignedHeaders"][0].split(";")
        log = await client.get(url)
        assert log.status_code == 200, log.text
        assert log.text == "hello public\n"
