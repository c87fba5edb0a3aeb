"""Jobs deleted from the job stream behind the platform's back: the run still finishes (issue 11).

The dispatcher's watchdog finds the run's unanswered job gone from ``PIPELINE_JOBS`` and
publishes it again, long before the job type's timeout (discovery: 10 minutes). Both the
discovery job and the CI job of the run are deleted, each before any worker could take it
(no worker of that type runs yet).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from forge_common import jobs
from forge_common.nats import Names
from forge_dev.testing import Platform

from .conftest import Cell

REPO_TOML = """
forge_version = "1"
[phases.check]
group = 1
"""

PROJECT_TOML = """
name = "app"
[[phases.check.steps]]
name = "check"
run = "echo checked"
"""


@pytest.fixture
async def watched(platform: Platform) -> AsyncIterator[tuple[Cell, NATS]]:
    cell = Cell(platform, "watchdog")
    nc = await nats.connect(platform.nats_url)
    try:
        cell.start_pipeline(env={"FORGE_DISPATCHER_WATCHDOG_INTERVAL": "0.5s"})
        yield cell, nc
    finally:
        await nc.close()
        cell.close()


async def _delete_when_queued(nc: NATS, names: Names, queued: asyncio.Queue[str]) -> str:
    """Wait for a job to be published (core NATS sees every JetStream publish), then delete
    its message from the stream; returns the job's subject."""
    subject = await asyncio.wait_for(queued.get(), 60)
    js = nc.jetstream()
    stream = names.stream(jobs.JOBS_STREAM)
    async with asyncio.timeout(10):
        while True:
            try:
                msg = await js.get_last_msg(stream, subject)
                break
            except NotFoundError:
                await asyncio.sleep(0.01)  # stored an instant after it was seen on the wire
    assert msg.seq is not None
    assert await js.delete_msg(stream, msg.seq)
    return subject


async def test_deleted_jobs_are_republished(watched: tuple[Cell, NATS], client: httpx.AsyncClient) -> None:
    cell, nc = watched
    names = Names(cell.prefix)
    repo = cell.repo("watched")
    sha = repo.commit({".forge/repo.toml": REPO_TOML, "app/.forge/project.toml": PROJECT_TOML})

    discovery: asyncio.Queue[str] = asyncio.Queue()
    ci: asyncio.Queue[str] = asyncio.Queue()

    async def to(queue: asyncio.Queue[str], msg: Msg) -> None:
        await queue.put(msg.subject)

    # The cell is this test's alone: every job published in it is this run's.
    await nc.subscribe(names.subject("pipeline.discovery.*"), cb=functools.partial(to, discovery))
    await nc.subscribe(names.subject("pipeline.tasks.>"), cb=functools.partial(to, ci))
    await nc.flush()

    run_id = await cell.create_run(client, repo, sha)
    assert await _delete_when_queued(nc, names, discovery) == names.subject(f"pipeline.discovery.{run_id}")
    cell.start_worker(env={"FORGE_WORKER_TYPES": "discovery"})
    ci_subject = await _delete_when_queued(nc, names, ci)
    assert ci_subject.startswith(names.subject(f"pipeline.tasks.{run_id}."))
    cell.start_worker(env={"FORGE_WORKER_TYPES": "ci"})

    # Well within the discovery timeout (10 minutes) and the CI timeout (30 minutes).
    assert not await cell.wait_completed([run_id], timeout=60)
    run = await cell.get_run(client, run_id)
    assert run["status"] == "success", run
    assert [t["status"] for p in run["phases"] for t in p["tasks"]] == ["success"]
    metrics = (await client.get(f"{cell.url}/metrics")).text
    for job_type in ("discovery", "ci"):
        line = f'forge_dispatcher_jobs_repaired_total{{action="republished",job_type="{job_type}"}} 1.0'
        assert line in metrics, [m for m in metrics.splitlines() if "repaired" in m]
