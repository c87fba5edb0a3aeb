"""Run retention: finished runs past the horizon go, with their objects; tombstones stay.

The sweep is the pipeline service's own ``RunRetention.sweep`` (what its periodic job runs),
called here against the session platform's database and S3 so the test decides when it runs;
everything a user sees is checked through the gateway.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from forge_common.db import Pool, create_pool
from forge_common.s3 import S3
from forge_common.settings import CommonSettings, load
from forge_dev.testing import Platform
from forge_pipeline.retention import RUNS_DELETED, RunRetention
from tests.release._support import finished_run, release_body, sha

DAY = 24 * 3600.0
HORIZON = 90 * DAY


@pytest.fixture
async def pool(platform: Platform) -> AsyncIterator[Pool]:
    pool = await create_pool(platform.database_url, 1, 2, "retention-test")
    yield pool
    await pool.close()


@pytest.fixture
def s3(platform: Platform) -> S3:
    return S3.from_settings(load(CommonSettings, platform.env()))


async def _age(platform: Platform, run_id: str, days: int) -> None:
    async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE pipeline.runs SET created_at = now() - make_interval(days => %s),"
            " completed_at = now() - make_interval(days => %s) WHERE id = %s",
            (days + 1, days, run_id),
        )


async def _put_objects(s3: S3, run_id: str) -> list[str]:
    keys = [
        f"pipeline-runs/{run_id}/logs/build/api/compile.log",
        f"pipeline-runs/{run_id}/results/ci/{uuid.uuid4()}.json",
    ]
    await s3.ensure_bucket()
    async with s3.client() as client:
        for key in keys:
            await client.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
    return keys


async def _exists(s3: S3, key: str) -> bool:
    async with s3.client() as client:
        listing = await client.list_objects_v2(Bucket=s3.bucket, Prefix=key)
    return bool(listing.get("Contents"))


async def test_retention_deletes_exactly_the_runs_past_the_horizon(platform: Platform, pool: Pool, s3: S3) -> None:
    repo = f"acme-{uuid.uuid4().hex[:8]}/retained"
    base = platform.gateway_url
    viewer = platform.headers(f"viewer-{uuid.uuid4().hex[:8]}@example.com", "viewer")
    worker = platform.headers(f"worker-{uuid.uuid4().hex[:8]}", "worker", service_account=True)
    async with httpx.AsyncClient(timeout=30) as http:
        released_commit, old_commit, recent_commit = sha(), sha(), sha()
        released = await finished_run(http, base, platform, repo, released_commit)
        old = await finished_run(http, base, platform, repo, old_commit, status="failed")
        recent = await finished_run(http, base, platform, repo, recent_commit)
        release = await http.post(
            f"{base}/v1/releases",
            json=release_body(repo, f"svc-{uuid.uuid4().hex[:8]}", released_commit, pipeline_run_id=released),
            headers=worker,
        )
        assert release.status_code == 201, release.text
        await _age(platform, released, 91)
        await _age(platform, old, 120)
        await _age(platform, recent, 89)  # inside the horizon: kept
        objects = {run: await _put_objects(s3, run) for run in (released, old, recent)}

        before = RUNS_DELETED._value.get()
        # Batches of one: the sweep keeps going until a batch comes back short.
        deleted = await RunRetention(pool, s3, HORIZON, 3600.0, batch=1).sweep()
        assert deleted >= 2
        assert RUNS_DELETED._value.get() - before == deleted

        for run in (released, old):
            for key in objects[run]:
                assert not await _exists(s3, key), key
        for key in objects[recent]:
            assert await _exists(s3, key), key

        # The release still names its run, and the run resolves to its tombstone.
        got = (await http.get(f"{base}/v1/releases/{release.json()['id']}", headers=viewer)).json()
        assert got["pipeline_run_id"] == released
        tomb = await http.get(f"{base}/v1/runs/{released}", headers=viewer)
        assert tomb.status_code == 200, tomb.text
        body = tomb.json()
        assert body["deleted"] is True
        assert (body["id"], body["repository"], body["commit_sha"], body["status"]) == (
            released,
            repo,
            released_commit,
            "success",
        )
        assert "phases" not in body
        assert (await http.get(f"{base}/v1/runs/{old}", headers=viewer)).json()["status"] == "failed"

        kept = await http.get(f"{base}/v1/runs/{recent}", headers=viewer)
        assert kept.status_code == 200
        assert "deleted" not in kept.json()
        listing = (await http.get(f"{base}/v1/runs", params={"repository": repo}, headers=viewer)).json()
        assert [item["id"] for item in listing["runs"]] == [recent]

        # A second pass finds nothing more of this repository to delete; unknown runs stay 404.
        await RunRetention(pool, s3, HORIZON, 3600.0, batch=10).sweep()
        assert (await http.get(f"{base}/v1/runs/{recent}", headers=viewer)).status_code == 200
        assert (await http.get(f"{base}/v1/runs/{uuid.uuid4()}", headers=viewer)).status_code == 404


async def test_pipeline_exports_the_deletion_metric(platform: Platform) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{platform.service_url('pipeline')}/metrics")).text
    assert "forge_pipeline_runs_deleted_total" in text


async def test_concurrent_sweeps_delete_each_run_once(platform: Platform, pool: Pool, s3: S3) -> None:
    """Two replicas sweeping at once: SKIP LOCKED hands every run to exactly one of them."""
    repo = f"acme-{uuid.uuid4().hex[:8]}/replicas"
    base = platform.gateway_url
    viewer = platform.headers(f"viewer-{uuid.uuid4().hex[:8]}@example.com", "viewer")
    async with httpx.AsyncClient(timeout=30) as http:
        runs = [await finished_run(http, base, platform, repo, sha()) for _ in range(6)]
        for run in runs:
            await _age(platform, run, 100)
        async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pipeline.runs WHERE status IN ('success', 'failed', 'cancelled')"
                " AND completed_at < now() - interval '90 days'"
            )
            row = await cur.fetchone()
            assert row is not None
            due = row[0]
        first, second = (RunRetention(pool, s3, HORIZON, 3600.0, batch=2) for _ in range(2))
        counts = await asyncio.gather(first.sweep(), second.sweep())
        assert sum(counts) == due
        for run in runs:
            body = (await http.get(f"{base}/v1/runs/{run}", headers=viewer)).json()
            assert body["deleted"] is True
