"""Fault: S3 unreachable for 10 s while steps run and write their logs; and S3 unreachable for
the pipeline service when it should index a finished step's log for search.

The workers reach S3 through a proxy the test takes down (connections refused, open ones cut)
and brings back 10 s later. Steps keep running; what they print waits in the worker (at most
one part per step) and each log is complete once S3 is back: a chatty step, a step that
prints 12 MiB, and a step that ends during the outage. The run is created and read, and the
logs fetched from their ``logs_url``, through a gateway, as a client does.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from forge_dev.testing import Platform
from tests.execution.conftest import Cell, steps_of

from .proxy import TcpProxy

pytestmark = pytest.mark.slow

REPO_TOML = '[phases.test]\ngroup = 1\ntimeout = "5m"\n'
LOUD_BYTES = 12 * 1024 * 1024


@pytest.fixture
async def s3_proxy(platform: Platform) -> AsyncIterator[TcpProxy]:
    target = urlsplit(platform.s3_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    await proxy.up()
    yield proxy
    await proxy.down()


@pytest.fixture
def s3_cell(platform: Platform) -> Iterator[Cell]:
    cell = Cell(platform, "s3out")
    try:
        cell.start_pipeline()  # presigns log URLs for the real S3 address
        cell.start_gateway()  # the run is created and read through it
        yield cell
    finally:
        cell.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60.0) as c:
        yield c


async def test_logs_complete_after_a_10s_s3_outage(
    s3_cell: Cell, s3_proxy: TcpProxy, client: httpx.AsyncClient
) -> None:
    cell = s3_cell
    cell.start_worker(env={"FORGE_S3_URL": s3_proxy.url})
    cell.wait_workers(1)
    gate = cell.shared_dir("s3-outage") / "started"  # steps see the shared directory alone
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "chatty/.forge/project.toml": f"""
name = "chatty"
[[phases.test.steps]]
name = "count"
run = "for i in $(seq 1 40); do echo line $i; [ $i = 5 ] && while [ ! -e {gate} ]; do sleep 0.1; done; sleep 0.4; done"
""",
            "loud/.forge/project.toml": f"""
name = "loud"
[[phases.test.steps]]
name = "flood"
run = "while [ ! -e {gate} ]; do sleep 0.1; done; yes 'forge log line 0123456789 abcdefghij' | head -c {LOUD_BYTES}"
""",
            "short/.forge/project.toml": f"""
name = "short"
[[phases.test.steps]]
name = "quick"
run = "while [ ! -e {gate} ]; do sleep 0.1; done; echo done during the outage"
""",
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    await cell.wait_run(
        client,
        run_id,
        until=lambda r: steps_of(r).get(("test", "chatty", "count"), {}).get("status") == "running",
        timeout=60,
    )
    await s3_proxy.down()
    gate.touch()
    await asyncio.sleep(10)  # the outage
    await s3_proxy.up()

    run = await cell.wait_run(client, run_id, timeout=240)
    assert run["status"] == "success", run
    steps = steps_of(run)
    chatty = (await client.get(steps[("test", "chatty", "count")]["logs_url"])).text
    assert chatty == "".join(f"line {i}\n" for i in range(1, 41))
    loud = (await client.get(steps[("test", "loud", "flood")]["logs_url"])).content
    line = b"forge log line 0123456789 abcdefghij\n"
    expected = (line * (LOUD_BYTES // len(line) + 1))[:LOUD_BYTES]
    assert hashlib.sha256(loud).hexdigest() == hashlib.sha256(expected).hexdigest()
    short = (await client.get(steps[("test", "short", "quick")]["logs_url"])).text
    assert short == "done during the outage\n"


async def test_search_indexes_the_logs_of_an_s3_outage_once_it_is_back(
    platform: Platform, s3_proxy: TcpProxy, client: httpx.AsyncClient
) -> None:
    """The pipeline service cannot read S3 when a step's report comes: the report is not held
    up, and the log becomes searchable once S3 is back (the indexer's queue keeps it)."""
    cell = Cell(platform, "s3idx", env={"FORGE_S3_URL": s3_proxy.url})
    try:
        # In a thread: the proxy runs on this event loop, and the service reads S3 as it starts.
        await asyncio.to_thread(cell.start_pipeline)
        cell.start_gateway()
        cell.start_worker(env={"FORGE_S3_URL": platform.s3_url})
        cell.wait_workers(1)
        word = f"okapi{uuid.uuid4().hex[:10]}"
        repo = cell.repo()
        sha = repo.commit(
            {
                ".forge/repo.toml": REPO_TOML,
                "app/.forge/project.toml": f'name = "app"\n[[phases.test.steps]]\nname = "say"\nrun = "echo {word}"\n',
            }
        )
        await s3_proxy.down()
        run_id = await cell.create_run(client, repo, sha)
        run = await cell.wait_run(client, run_id, timeout=60)
        assert run["status"] == "success", run
        step_id = steps_of(run)[("test", "app", "say")]["id"]
        search = f"{cell.url}/v1/search/logs"
        headers = cell.headers("viewer")
        async with await psycopg.AsyncConnection.connect(cell.database_url, autocommit=True) as conn:
            # The indexer tried, could not read the log, and keeps it queued for later.
            while True:
                cur = await conn.execute("SELECT attempts FROM pipeline.log_index_queue WHERE step_id = %s", (step_id,))
                row = await cur.fetchone()
                assert row is not None, "the step left the queue while S3 was unreachable"
                if row[0] >= 1:
                    break
                await asyncio.sleep(0.05)
            assert (await client.get(search, params={"q": word}, headers=headers)).json()["results"] == []
            # What an operator sees (ForgeLogIndexBacklog): the backlog on the service's /metrics.
            assert await _log_index_pending(client, cell) >= 1
            await s3_proxy.up()
            deadline = asyncio.get_running_loop().time() + 60
            while not (results := (await client.get(search, params={"q": word}, headers=headers)).json()["results"]):
                assert asyncio.get_running_loop().time() < deadline, "the log was not indexed after S3 came back"
                await asyncio.sleep(0.2)
            cur = await conn.execute("SELECT count(*) FROM pipeline.log_index_queue WHERE step_id = %s", (step_id,))
            assert await cur.fetchone() == (0,)
        assert await _log_index_pending(client, cell) == 0
        assert [(r["step_id"], r["line"]) for r in results] == [(step_id, word)]
    finally:
        cell.close()


async def _log_index_pending(client: httpx.AsyncClient, cell: Cell) -> float:
    text = (await client.get(f"{cell.pipelines[0].url}/metrics")).text
    [line] = [line for line in text.splitlines() if line.startswith("forge_pipeline_log_index_pending ")]
    return float(line.split()[1])
