"""A pipeline replica taking a run over adopts the workflow its predecessor submitted.

The cell's API instance (no dispatcher) serves the pods' reports and the test; the dispatching
replicas come and go. The workflow is never submitted twice: the second replica's submission
meets the existing one (409) and adopts it with the dispatch attempt it carries.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.testing import Platform
from forge_pipeline.dispatch.argo import LABEL_RUN
from tests.execution.conftest import Cell, steps_of

from .conftest import ARGO_TOKEN, add_worker_secret, executor_env
from .fake_argo import FakeArgo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def api_cell(platform: Platform) -> AsyncIterator[tuple[Cell, FakeArgo]]:
    argo = await FakeArgo(token=ARGO_TOKEN).start()
    cell = Cell(platform, "argotk")
    try:
        api = cell.start_pipeline(env={"FORGE_DISPATCHER_ENABLED": "false"})
        cell.start_worker(env={"FORGE_WORKER_TYPES": "discovery"})
        release = cell.start_release()
        add_worker_secret(argo, cell, api.url or "", release.url or "")
        yield cell, argo
    finally:
        cell.close()
        await argo.stop()


async def _adopted(client: httpx.AsyncClient, url: str, timeout: float = 30.0) -> None:
    """Until the replica's metrics count an adopted CI workflow."""
    pattern = re.compile(r'^forge_pipeline_argo_workflows_total\{job_type="ci",outcome="adopted"\} ([0-9.]+)$', re.M)
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search((await client.get(f"{url}/metrics")).text)
        if found and float(found.group(1)) >= 1:
            return
        assert time.monotonic() < deadline, "the second replica did not adopt the workflow"
        await asyncio.sleep(0.1)


async def test_a_replica_taking_a_run_over_adopts_its_workflow(api_cell: tuple[Cell, FakeArgo]) -> None:
    cell, argo = api_cell
    first = cell.start_pipeline(env=executor_env(argo))
    barrier = cell.shared_dir("takeover")
    repo = cell.repo("takeover")
    sha = repo.commit(
        {
            ".forge/repo.toml": "[phases.build]\ngroup = 1\n",
            "api/.forge/project.toml": 'name = "api"\n[[phases.build.steps]]\nname = "wait"\n'
            f'run = "while [ ! -e {barrier}/go ]; do sleep 0.1; done; echo released"\n',
        }
    )
    async with httpx.AsyncClient(timeout=30.0) as client:
        run_id = await cell.create_run(client, repo, sha)
        await cell.wait_run(client, run_id, until=lambda r: any(s["status"] == "running" for s in steps_of(r).values()))
        second = cell.start_pipeline(env=executor_env(argo))
        first.stop()  # SIGTERM: its dispatcher hands its runs over
        assert second.url
        await _adopted(client, second.url)
        (barrier / "go").touch()
        run = await cell.wait_run(client, run_id, timeout=60)
    assert run["status"] == "success", run
    assert steps_of(run)[("build", "api", "wait")]["status"] == "success"
    submitted = [w for w in argo.submitted if w["metadata"]["labels"][LABEL_RUN] == run_id]
    assert len(submitted) == 1
    # (The run completes from the pod's last report; its pod exits a moment later.)
    await argo.wait_for(lambda: submitted[0]["status"]["phase"] == "Succeeded")
