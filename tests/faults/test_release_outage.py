"""Fault: the release service is down (killed, then started again 10 s later) while runs on
``main`` finish. Every run still gets its release afterwards: the release job retries with
back-off instead of giving up after three quick deliveries. A release that cannot be made
for good shows as ``release_error`` on the run and in ``forge_pipeline_release_failures_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from forge_dev.testing import Platform
from tests.execution.conftest import Cell

pytestmark = pytest.mark.slow

REPO_TOML = "[phases.build]\ngroup = 1\n"
PROJECT = (
    'name = "api"\n[[phases.build.steps]]\nname = "make"\nrun = "echo built"\n[release]\non = [{ branch = "main" }]\n'
)
RUNS = 4


@pytest.fixture
def release_cell(platform: Platform) -> Iterator[Cell]:
    cell = Cell(platform, "relout")
    try:
        cell.start_pipeline()
        # Runs and releases are read through a gateway, as a client reads them (its release
        # routes go to the platform's release service, on the database the cell's one writes).
        cell.start_gateway()
        yield cell
    finally:
        cell.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


async def _release(client: httpx.AsyncClient, cell: Cell, repository: str, sha: str, timeout: float) -> httpx.Response:
    url = f"{cell.url}/v1/releases/{repository}/api/{sha}"
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(url, headers=cell.headers("viewer"))
        if resp.status_code != 404 or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.2)


async def test_runs_finishing_during_a_release_outage_get_their_releases(
    release_cell: Cell, client: httpx.AsyncClient
) -> None:
    cell = release_cell
    cell.start_worker()
    cell.wait_workers(1)
    release = cell.releases[0]
    release.kill()
    down_at = time.monotonic()

    commits = []
    for i in range(RUNS):
        repo = cell.repo(f"svc{i}")
        sha = repo.commit({".forge/repo.toml": REPO_TOML, "api/.forge/project.toml": PROJECT})
        commits.append((repo.repository, sha, await cell.create_run(client, repo, sha)))
    for _, _, run_id in commits:
        run = await cell.wait_run(client, run_id, timeout=60)
        assert run["status"] == "success", run

    # Down for 10 s in all; then the same process (same port) comes back.
    await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - down_at)))
    cell.platform.stack.infra.respawn(release)

    for repository, sha, run_id in commits:
        resp = await _release(client, cell, repository, sha, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["pipeline_run_id"] == run_id
        assert (await cell.get_run(client, run_id))["release_error"] is None


async def test_a_release_that_keeps_failing_is_visible_on_the_run(
    release_cell: Cell, client: httpx.AsyncClient
) -> None:
    cell = release_cell
    cell.start_worker(env={"FORGE_RELEASE_RETRY_FOR": "3s"})
    cell.wait_workers(1)
    cell.releases[0].kill()  # and it stays down

    repo = cell.repo("doomed")
    sha = repo.commit({".forge/repo.toml": REPO_TOML, "api/.forge/project.toml": PROJECT})
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, until=lambda r: r.get("release_error") is not None, timeout=60)
    assert run["status"] == "success"
    assert "api: the release service still failed after 3s of retries" in run["release_error"]
    metrics = (await client.get(f"{cell.pipelines[0].url}/metrics")).text
    assert 'forge_pipeline_release_failures_total{reason="failed"} 1.0' in metrics
