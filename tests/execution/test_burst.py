"""A burst of concurrent POSTs into one repository ends with every run finished (issue 11).

On NATS before 2.9.12 a subject purge of the work-queue stream ``PIPELINE_JOBS`` could move a filtered
consumer's delivered sequence past messages still in the stream: their discovery jobs were never
delivered and the runs stayed ``running`` until the 10-minute discovery timeout. The burst mixes
commits that succeed with commits whose runs fail (so the dispatcher removes the ended runs'
queued jobs while the other runs' discovery jobs are queued), on the NATS server ``make test``
uses, through the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import Cell

REPO_TOML = """
forge_version = "1"
[phases.check]
group = 1
"""

BURST = 32
ROUNDS = 3


def project_toml(command: str) -> str:
    return f"""
name = "app"
[[phases.check.steps]]
name = "check"
run = "{command}"
"""


@pytest.fixture(scope="module")
def burst_cell(platform: Platform) -> Iterator[tuple[Cell, Process]]:
    """A cell with two workers and a gateway in front of its pipeline instance."""
    cell = Cell(platform, "burst")
    gateway: Process | None = None
    try:
        cell.start_pipeline()
        cell.start_worker()
        cell.start_worker()
        cell.wait_workers(2)
        gateway = platform.start_process("gateway", env={"FORGE_PIPELINE_URL": cell.pipelines[0].url})
        yield cell, gateway
    finally:
        if gateway is not None:
            gateway.stop(timeout=5)
        cell.close()


async def test_burst_into_one_repository_finishes_every_run(
    burst_cell: tuple[Cell, Process], client: httpx.AsyncClient
) -> None:
    cell, gateway = burst_cell
    repo = cell.repo("burst")
    expected: dict[str, str] = {}
    for _round in range(ROUNDS):
        # Every third commit fails its step: its run ends early and its jobs are dropped.
        shas = [
            repo.commit(
                {
                    ".forge/repo.toml": REPO_TOML,
                    "app/.forge/project.toml": project_toml("exit 3" if i % 3 == 0 else "true"),
                },
                message=f"commit {i}",
            )
            for i in range(BURST)
        ]

        async def post(sha: str) -> str:
            resp = await client.post(
                f"{gateway.url}/v1/runs",
                json={"repository": repo.repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
                headers=cell.headers(),
            )
            assert resp.status_code == 201, resp.text
            return str(resp.json()["id"])

        run_ids = await asyncio.gather(*(post(sha) for sha in shas))
        expected.update({run_id: "failed" if i % 3 == 0 else "success" for i, run_id in enumerate(run_ids)})

    # Every run finishes well before any timeout (the discovery timeout is 10 minutes).
    stuck = await cell.wait_completed(list(expected), timeout=120)
    assert not stuck, f"{len(stuck)} of {len(expected)} runs never completed: {sorted(stuck)[:5]}"
    statuses = {r: (await cell.get_run(client, r))["status"] for r in expected}
    assert statuses == expected
