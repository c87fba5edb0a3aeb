"""Release triggers: a successful run on a matching branch releases the project, once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from forge_dev.stack import Process

from .conftest import Cell

REPO_TOML = "[phases.build]\ngroup = 1\n"


@pytest.fixture(scope="module")
def gateway(cell: Cell) -> Iterator[Process]:
    """A gateway in front of the shared cell's pipeline instance (its release routes go to the
    platform's release service, whose database the cell's release service writes)."""
    proc = cell.platform.start_process("gateway", env={"FORGE_PIPELINE_URL": cell.pipelines[0].url})
    try:
        yield proc
    finally:
        proc.stop()


def project(name: str, release: str) -> str:
    return f'name = "{name}"\n[[phases.build.steps]]\nname = "make"\nrun = "echo built"\n{release}'


async def _evaluated(cell: Cell, run_id: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(cell.database_url, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT release_evaluated_at FROM pipeline.runs WHERE id = %s", (run_id,))
            row = await cur.fetchone()
            if row and row[0] is not None:
                return
            if time.monotonic() > deadline:
                raise AssertionError("release triggers were not evaluated")
            await asyncio.sleep(0.05)


async def test_branch_push_releases_matching_projects(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo("rel")
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "api/.forge/project.toml": project("api", '[release]\non = [{ branch = "main" }, { tag = true }]\n'),
            "web/.forge/project.toml": project("web", '[release]\non = [{ branch = "release/*" }]\n'),
            "docs/.forge/project.toml": project("docs", ""),
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=60)
    assert run["status"] == "success", run
    release_url = cell.platform.service_url("release")
    headers = cell.headers("viewer")
    deadline = time.monotonic() + 30
    while True:
        resp = await client.get(f"{release_url}/v1/releases/{repo.repository}/api/{sha}", headers=headers)
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert resp.status_code == 200, resp.text
    release = resp.json()
    assert release["pipeline_run_id"] == run_id
    assert release["commit_sha"] == sha
    assert release["release_number"] == 1
    assert release["trigger"]["trigger_type"] == "branch_push"
    assert release["trigger"]["branch"] == "main"
    assert release["trigger"]["triggered_by"] == "dev@forge.local"  # the run's author, not the worker
    # ... by stable identity too (the approval service checks self-approval on it).
    assert release["triggered_by_id"] == "sub:dev@forge.local"
    await _evaluated(cell, run_id)
    # web's rule does not match main; docs has none.
    for name in ("web", "docs"):
        resp = await client.get(f"{release_url}/v1/releases/{repo.repository}/{name}/{sha}", headers=headers)
        assert resp.status_code == 404, resp.text


async def test_feature_branch_releases_nothing(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo("feat")
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "api/.forge/project.toml": project("api", '[release]\non = [{ branch = "main" }]\n'),
        },
        branch="feature/x",
    )
    run_id = await cell.create_run(client, repo, sha, branch="feature/x")
    run = await cell.wait_run(client, run_id, timeout=60)
    assert run["status"] == "success"
    await _evaluated(cell, run_id)
    resp = await client.get(
        f"{cell.platform.service_url('release')}/v1/releases/{repo.repository}/api/{sha}",
        headers=cell.headers("viewer"),
    )
    assert resp.status_code == 404


async def test_a_run_for_an_abbreviated_sha_keeps_and_releases_the_full_sha(
    cell: Cell, gateway: Process, client: httpx.AsyncClient
) -> None:
    """Through the gateway, as a client: the run made for an abbreviated SHA records the full
    one once discovery resolved it, and its release is of the full SHA."""
    repo = cell.repo("short")
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "api/.forge/project.toml": project("api", '[release]\non = [{ branch = "main" }]\n'),
        }
    )
    run_body = {"repository": repo.repository, "branch": "main", "commit_sha": sha[:10], "trigger_type": "push"}
    created = await client.post(f"{gateway.url}/v1/runs", json=run_body, headers=cell.headers())
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        run = (await client.get(f"{gateway.url}/v1/runs/{run_id}", headers=cell.headers("viewer"))).json()
        if run["status"] in ("success", "failed", "cancelled") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert run["status"] == "success", run
    assert run["commit_sha"] == sha  # resolved by discovery
    deadline = time.monotonic() + 30
    while True:
        resp = await client.get(
            f"{gateway.url}/v1/releases/{repo.repository}/api/{sha}", headers=cell.headers("viewer")
        )
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert resp.status_code == 200, resp.text
    assert resp.json()["commit_sha"] == sha
    assert resp.json()["pipeline_run_id"] == run_id
    run = (await client.get(f"{gateway.url}/v1/runs/{run_id}", headers=cell.headers("viewer"))).json()
    assert run["release_error"] is None
    # The full SHA now names the same run.
    again = await client.post(f"{gateway.url}/v1/runs", json=run_body | {"commit_sha": sha}, headers=cell.headers())
    assert again.status_code == 409, again.text
    assert again.json()["error"]["details"]["existing_id"] == run_id
