"""Search through a gateway on a real platform: the live tests' lane (pipeline, worker, release
service, gateway; own database and NATS prefix) with steps whose logs the worker uploads to S3."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from live.conftest import Lane, SseReader

from forge_dev.testing import Platform


@pytest.fixture(scope="session")
def lane(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    lane = Lane(platform, tmp_path_factory.mktemp("search"))
    try:
        lane.start()
        yield lane
    finally:
        lane.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as c:
        yield c


async def finished_run(
    client: httpx.AsyncClient, lane: Lane, repository: str, sha: str, branch: str = "main"
) -> dict[str, Any]:
    """Create a run and return its final tree once its event stream has ended and its logs are
    indexed (in the background: nothing of the run left in the indexer's queue)."""
    run_id = await lane.create_run(client, repository, sha, branch)
    async with client.stream("GET", f"{lane.gateway_url}/v1/runs/{run_id}/events", headers=lane.headers("viewer")) as r:
        await SseReader(r).rest()
    await logs_indexed(lane, run_id)
    return await lane.get_run(client, run_id)


async def logs_indexed(lane: Lane, run_id: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with await psycopg.AsyncConnection.connect(lane.env["FORGE_DATABASE_URL"], autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM pipeline.log_index_queue q JOIN pipeline.steps s ON s.id = q.step_id"
                " WHERE s.run_id = %s",
                (run_id,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            assert loop.time() < deadline, f"the logs of run {run_id} were not indexed within {timeout}s"
            await asyncio.sleep(0.02)
