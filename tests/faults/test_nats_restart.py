"""Fault: the NATS server restarted while 50 runs are in flight.

NATS here is a private server (JetStream on disk) for this test's pipeline instance and
workers; the test stops it (SIGTERM, as a rolling restart does) while runs are being
discovered, dispatched and run, and starts it again on the same port and store. All 50 runs
must finish successfully, and every run's ``pipeline.run.created`` and
``pipeline.run.completed`` events must be in the stream exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from forge_dev.stack import free_port, wait_tcp
from forge_dev.testing import Platform, read_events
from tests.execution.conftest import TERMINAL, Cell

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RUNS = 50
REPO_TOML = "[phases.test]\ngroup = 1\n[phases.build]\ngroup = 2\n"
PROJECT = """name = "app"
[[phases.test.steps]]
name = "check"
run = "sleep 3; echo checked"
[[phases.build.steps]]
name = "package"
run = "echo packaged"
"""


class PrivateNats:
    def __init__(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.skip("nats-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.store = Path(tempfile.mkdtemp(prefix="forge-faults-nats-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        log = (self.store / "nats.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_tcp(self.port, 15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    server = PrivateNats()
    server.start()
    yield server
    server.close()


@pytest.fixture
def nats_cell(platform: Platform, private_nats: PrivateNats) -> Iterator[Cell]:
    cell = Cell(platform, "natsrst", env={"FORGE_NATS_URL": private_nats.url, "FORGE_DB_POOL_MAX": "8"})
    try:
        cell.start_pipeline()
        cell.start_gateway()  # runs are created and listed through it, as clients do
        cell.start_worker()
        cell.start_worker()
        yield cell
    finally:
        with contextlib.suppress(Exception):
            cell.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


async def _statuses(cell: Cell, client: httpx.AsyncClient, repository: str) -> dict[str, str]:
    """Every run of the repository by id: one list request."""
    resp = await client.get(
        f"{cell.url}/v1/runs", params={"repository": repository, "limit": "100"}, headers=cell.headers("viewer")
    )
    assert resp.status_code == 200, resp.text
    return {run["id"]: run["status"] for run in resp.json()["runs"]}


async def test_50_runs_survive_a_nats_restart(
    nats_cell: Cell, private_nats: PrivateNats, client: httpx.AsyncClient
) -> None:
    cell = nats_cell
    repo = cell.repo()
    shas = [
        repo.commit({".forge/repo.toml": REPO_TOML, "app/.forge/project.toml": PROJECT}, message=f"change {i}")
        for i in range(RUNS)
    ]
    run_ids = list(await asyncio.gather(*(cell.create_run(client, repo, sha) for sha in shas)))

    # Restart while runs are in every state: some done, some running, most still queued.
    deadline = time.monotonic() + 120
    while True:
        statuses = collections.Counter((await _statuses(cell, client, repo.repository)).values())
        if statuses["success"] + statuses["running"] >= 5:
            break
        assert time.monotonic() < deadline, f"runs did not start: {statuses}"
        await asyncio.sleep(0.2)
    assert statuses["success"] < RUNS, f"every run finished before the restart; nothing was in flight: {statuses}"
    private_nats.stop()
    await asyncio.sleep(2)
    private_nats.start()

    deadline = time.monotonic() + 300
    while True:
        final = await _statuses(cell, client, repo.repository)
        print(
            "after restart", round(time.monotonic() - deadline + 300), collections.Counter(final.values()), flush=True
        )
        if all(status in TERMINAL for status in final.values()):
            break
        assert time.monotonic() < deadline, f"runs still open: {collections.Counter(final.values())}"
        await asyncio.sleep(0.5)
    assert set(final) == set(run_ids)
    assert collections.Counter(final.values()) == {"success": RUNS}, final

    view: Any = SimpleNamespace(nats_url=private_nats.url, nats_prefix=cell.prefix)
    wanted = set(run_ids)
    for event_type in ("pipeline.run.created", "pipeline.run.completed"):
        deadline = time.monotonic() + 30
        while True:
            events = await read_events(view, event_type, lambda e: e["data"].get("run_id") in wanted)
            per_run = collections.Counter(e["data"]["run_id"] for e in events)
            if set(per_run) == wanted or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert set(per_run) == wanted, f"{event_type} missing for {len(wanted - set(per_run))} runs"
        assert set(per_run.values()) == {1}, f"{event_type} duplicated: {[r for r, n in per_run.items() if n > 1]}"
