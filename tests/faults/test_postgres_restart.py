"""Postgres restarted under load: clients see only 2xx or 503 envelopes, never a 500 or a hang,
and no run is lost or duplicated.

Postgres here is a PRIVATE server (other suites share the machine's), started for this test;
a pipeline service and a gateway run on it as real processes, and the test stops and starts
that server while client lanes keep creating and reading runs through the gateway. A client
that gets a 503 does what Retry-After says and sends the same request again with the same
Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from forge_dev.stack import Process, _with_database
from forge_dev.testing import Platform, _delete_streams

pgserver = pytest.importorskip("pgserver", reason="pgserver (embedded Postgres binaries) is not installed")

LANES = 6
RUNS_PER_PHASE = 3

pytestmark = pytest.mark.slow


class PrivatePostgres:
    """A Postgres server of this test's own, on a Unix socket in a temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="forge-faults-pg-"))
        self.server = pgserver.get_server(self.root / "pgdata", cleanup_mode="delete")
        self.admin_url: str = self.server.get_uri()
        self.socket_dir = parse_qs(urlsplit(self.admin_url).query)["host"][0]

    def _pg_ctl(self, *args: str) -> None:
        from pgserver import _commands

        _commands.pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        # Fast shutdown: open connections are cut, as in a failover or a restart for an upgrade.
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        log = str(self.server.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        yield pg
    finally:
        pg.close()


@dataclass
class Cell:
    gateway: Process
    pipeline: Process
    database_url: str


@pytest.fixture
async def cell(platform: Platform, private_postgres: PrivatePostgres) -> AsyncIterator[Cell]:
    with psycopg.connect(private_postgres.admin_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE forge")
    database_url = _with_database(private_postgres.admin_url, "forge")
    prefix = f"{platform.nats_prefix}pg{uuid.uuid4().hex[:6]}"
    env = {"FORGE_DATABASE_URL": database_url, "FORGE_NATS_PREFIX": prefix, "FORGE_DB_POOL_MIN": "2"}
    pipeline = await asyncio.to_thread(platform.start_process, "pipeline", env)
    gateway = await asyncio.to_thread(platform.start_process, "gateway", {"FORGE_PIPELINE_URL": pipeline.url})
    try:
        yield Cell(gateway, pipeline, database_url)
    finally:
        gateway.stop()
        pipeline.stop()
        with contextlib.suppress(Exception):
            await _delete_streams(platform.nats_url, prefix)


@dataclass
class Outcomes:
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # anything that is neither 2xx nor a proper 503
    unavailable: int = 0
    created: dict[str, str] = field(default_factory=dict)  # commit sha -> run id

    def record(self, resp: httpx.Response) -> bool:
        """True when the request succeeded; a 503 must be the envelope with Retry-After."""
        self.statuses.append(resp.status_code)
        if resp.status_code == 503:
            ok = resp.json()["error"]["code"] == "service_unavailable" and int(resp.headers["retry-after"]) > 0
            if not ok:
                self.failures.append(f"503 without envelope/Retry-After: {resp.text[:200]}")
            self.unavailable += 1
            return False
        if not 200 <= resp.status_code < 300:
            self.failures.append(f"{resp.status_code}: {resp.text[:300]}")
            raise AssertionError(f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text[:300]}")
        return True


async def until_2xx(client: httpx.AsyncClient, outcomes: Outcomes, *args: Any, **kwargs: Any) -> httpx.Response:
    while True:
        resp = await client.request(*args, **kwargs)
        if outcomes.record(resp):
            return resp
        await asyncio.sleep(min(float(resp.headers.get("retry-after", "1")), 0.5))  # a client's backoff


async def lane(
    client: httpx.AsyncClient, platform: Platform, n: int, outcomes: Outcomes, target: list[int], made: list[int]
) -> None:
    headers = platform.headers(f"pg-lane-{n}@example.com", "developer")
    i = 0
    while made[n] < target[0]:
        sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        body = {"repository": f"faults/pg-{n}-{i}", "branch": "main", "commit_sha": sha, "trigger_type": "manual"}
        key = {**headers, "Idempotency-Key": f"lane-{n}-{i}"}
        created = await until_2xx(client, outcomes, "POST", "/v1/runs", json=body, headers=key)
        run_id = created.json()["id"]
        outcomes.created[sha] = run_id
        read = await until_2xx(client, outcomes, "GET", f"/v1/runs/{run_id}", headers=headers)
        assert read.json()["commit_sha"] == sha
        made[n] += 1
        i += 1


async def until(condition: Callable[[], bool], lanes: list[asyncio.Task[None]]) -> None:
    """Wait for ``condition`` while the client lanes run; a lane that fails fails the test now."""
    while not condition():
        await asyncio.wait(lanes, timeout=0.1, return_when=asyncio.FIRST_EXCEPTION)
        for task in lanes:
            if task.done():
                task.result()


async def test_postgres_restart_gives_only_2xx_or_503_and_loses_no_run(
    platform: Platform, private_postgres: PrivatePostgres, cell: Cell
) -> None:
    outcomes = Outcomes()
    made = [0] * LANES
    target = [10**9]  # runs per lane; lowered at the end
    # The client's own timeout is far above the service's bounded waits: a hang shows as a failure.
    async with httpx.AsyncClient(base_url=cell.gateway.url, timeout=60) as client:
        lanes = [asyncio.create_task(lane(client, platform, n, outcomes, target, made)) for n in range(LANES)]
        try:
            async with asyncio.timeout(240):  # hang guard
                await until(lambda: min(made) >= RUNS_PER_PHASE, lanes)
                await asyncio.to_thread(private_postgres.stop)
                await until(lambda: outcomes.unavailable >= LANES, lanes)
                await asyncio.to_thread(private_postgres.start)
                # Every lane creates a few more runs on the restarted server, then stops.
                target[0] = max(made) + RUNS_PER_PHASE
                await asyncio.gather(*lanes)
        finally:
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    assert outcomes.failures == []
    assert outcomes.unavailable > 0
    assert set(outcomes.statuses) <= {200, 201, 503}
    # Nothing lost, nothing doubled: exactly the runs the clients were told about, once each.
    with psycopg.connect(cell.database_url) as conn:
        rows = conn.execute("SELECT commit_sha, id::text FROM pipeline.runs").fetchall()
    assert sorted(rows) == sorted(outcomes.created.items())
