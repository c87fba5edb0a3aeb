"""Search through a gateway on a real platform: the live tests' lane (pipeline, worker, release
service, gateway; own database and NATS prefix) with steps whose logs the worker uploads to S3."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
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
    """Create a run and return its final tree once its event stream has ended."""
    run_id = await lane.create_run(client, repository, sha, branch)
    async with client.stream("GET", f"{lane.gateway_url}/v1/runs/{run_id}/events", headers=lane.headers("viewer")) as r:
        await SseReader(r).rest()
    return await lane.get_run(client, run_id)
