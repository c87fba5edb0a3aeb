"""Fault: the repositories' git remote accepts connections and never answers.

The worker fetches through ``FORGE_GIT_URL_TEMPLATE`` (here a local TCP server that reads and
never answers, as git over HTTP sees a stalled server) with ``FORGE_GIT_TIMEOUT`` = 3 s. Runs,
created and read through a gateway as a client would, fail with an error naming the operation
and the remote (credentials redacted) instead of staying ``pending`` while the job's heartbeats
keep it alive; the fetch's deadline also frees the repository's lock, so the next run of the
same repository gets its own answer rather than queueing behind the stalled fetch.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform
from tests.execution.conftest import TERMINAL, Cell

from .proxy import StalledRemote

pytestmark = pytest.mark.slow


@pytest.fixture
async def stalled_remote() -> AsyncIterator[StalledRemote]:
    remote = StalledRemote()
    await remote.start()
    try:
        yield remote
    finally:
        await remote.stop()


@pytest.fixture
def lane(platform: Platform, stalled_remote: StalledRemote) -> Iterator[tuple[Cell, Process]]:
    template = f"http://forge:s3cret-token@127.0.0.1:{stalled_remote.port}/{{repository}}.git"
    cell = Cell(platform, "gitstall", env={"FORGE_GIT_URL_TEMPLATE": template, "FORGE_GIT_TIMEOUT": "3s"})
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


async def _run_to_its_end(client: httpx.AsyncClient, cell: Cell, repository: str) -> dict[str, Any]:
    created = await client.post(
        "/v1/runs",
        json={"repository": repository, "branch": "main", "commit_sha": secrets.token_hex(20), "trigger_type": "push"},
        headers=cell.headers(),
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # the fetch's own deadline is 3 s; this only bounds a hang
    while True:
        got = await client.get(f"/v1/runs/{run_id}", headers=cell.headers("viewer"))
        assert got.status_code == 200, got.text
        run: dict[str, Any] = got.json()
        if run["status"] in TERMINAL:
            return run
        assert loop.time() < deadline, f"run {run_id} is still {run['status']}: the stalled fetch was not bounded"
        await asyncio.sleep(0.1)


async def test_a_stalled_git_remote_fails_the_run_naming_the_remote(
    lane: tuple[Cell, Process], stalled_remote: StalledRemote
) -> None:
    cell, gateway = lane
    repository = f"{cell.tag}/shop"
    redacted = f"http://***@127.0.0.1:{stalled_remote.port}/{repository}.git"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        first, second = await asyncio.gather(
            _run_to_its_end(client, cell, repository), _run_to_its_end(client, cell, repository)
        )
    assert stalled_remote.connected.is_set()
    for run in (first, second):
        assert run["status"] == "failed", run
        error = run["error"]
        assert f"fetching {repository} from {redacted} timed out after 3s" in error, error
        assert "s3cret" not in error
