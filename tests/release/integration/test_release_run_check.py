"""FORGE_VERIFY_PIPELINE_RUNS: a create's pipeline_run_id must name an existing, successful run of
the same repository and commit, asked of the real pipeline service with the caller's token. The release
service runs in-process against the platform's database, its run checker pointed at the
platform's pipeline service."""

from __future__ import annotations

import datetime as dt
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from forge_common.db import Pool, create_pool
from forge_common.errors import InvalidRequest
from forge_dev.testing import Platform
from forge_release.domain import NewRelease
from forge_release.oci import LayoutPublisher
from forge_release.runs import PipelineRuns
from forge_release.service import ReleaseService
from forge_release.store import UnitOfWork
from release._support import finished_run


@pytest.fixture
async def service(platform: Platform) -> AsyncIterator[ReleaseService]:
    pool: Pool = await create_pool(platform.database_url, 1, 2, "release-run-check")
    runs = PipelineRuns(platform.service_url("pipeline"))
    with tempfile.TemporaryDirectory() as tmp:
        yield ReleaseService(UnitOfWork(pool), LayoutPublisher(Path(tmp)), runs)
    await runs.close()
    await pool.close()


def _release(repo: str, commit: str, run_id: str) -> NewRelease:
    return NewRelease.parse(
        repository=repo,
        project="api",
        commit_sha=commit,
        pipeline_run_id=run_id,
        artifacts=[],
        trigger=("branch_push", "main", None),
        created_by="service-account-forge-worker",
        now=dt.datetime.now(dt.UTC),
    )


async def test_run_must_exist_and_match(platform: Platform, service: ReleaseService) -> None:
    tag = uuid.uuid4().hex[:10]
    repo, commit = f"runcheck-{tag}/repo", secrets.token_hex(20)
    worker = platform.token(f"worker-{tag}", "worker", service_account=True)
    async with httpx.AsyncClient() as client:
        run_id = await finished_run(client, platform.gateway_url, platform, repo, commit)

    with pytest.raises(InvalidRequest, match="does not exist") as missing:
        await service.create_release(_release(repo, commit, str(uuid.uuid4())), worker)
    assert missing.value.details["field"] == "pipeline_run_id"
    with pytest.raises(InvalidRequest, match="built") as other_commit:
        await service.create_release(_release(repo, secrets.token_hex(20), run_id), worker)
    assert other_commit.value.details == {"field": "pipeline_run_id", "run_repository": repo, "run_commit_sha": commit}
    with pytest.raises(InvalidRequest):
        await service.create_release(_release(f"other-{tag}/repo", commit, run_id), worker)

    created = await service.create_release(_release(repo, commit, run_id), worker)
    assert created.number == 1
    assert (await service.get_by_id(created.id)).pipeline_run_id == run_id
