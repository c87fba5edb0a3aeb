"""Run retention: finished runs older than ``FORGE_RUN_RETENTION`` are deleted, with their tree
(phases, tasks, steps: ``ON DELETE CASCADE``) and their objects under ``pipeline-runs/{id}/``
(logs and results), leaving a tombstone (``pipeline.run_tombstones``).

Every deleted run keeps a tombstone: the pipeline service cannot see which runs a release names
(the release schema is not its to read), and a tombstone is a few dozen bytes. ``GET
/v1/runs/{id}`` of a deleted run answers 200 with the tombstone and ``"deleted": true``.

Several replicas may sweep at once: each batch locks its runs ``FOR UPDATE SKIP LOCKED``, so two
replicas never pick the same run. The objects are deleted before the rows, inside the batch's
transaction: if storage fails the rows stay and the next sweep retries; nothing is left that
points at deleted logs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter

from forge_common.db import Pool
from forge_common.s3 import S3

__all__ = ["RUNS_DELETED", "RunRetention", "Tombstone", "find_tombstone"]

log = structlog.get_logger(__name__)

RUNS_DELETED = Counter("forge_pipeline_runs_deleted_total", "Finished runs deleted by retention")

_PICK = """
SELECT id FROM pipeline.runs
 WHERE status IN ('success', 'failed', 'cancelled') AND completed_at < now() - make_interval(secs => %s)
 ORDER BY completed_at, id
 LIMIT %s
 FOR UPDATE SKIP LOCKED
"""
_DELETE = """
WITH gone AS (
    DELETE FROM pipeline.runs WHERE id = ANY(%s)
    RETURNING id, repository, branch, commit_sha, status, created_at, completed_at
)
INSERT INTO pipeline.run_tombstones (id, repository, branch, commit_sha, status, created_at, completed_at)
SELECT id, repository, branch, commit_sha, status, created_at, completed_at FROM gone
ON CONFLICT (id) DO NOTHING
"""


class Tombstone(msgspec.Struct, kw_only=True):
    id: str
    repository: str
    branch: str
    commit_sha: str
    status: str
    created_at: str
    completed_at: str | None
    deleted_at: str
    deleted: bool = True


async def find_tombstone(pool: Pool, run_id: str) -> Tombstone | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, repository, branch, commit_sha, status::text AS status, created_at, completed_at, deleted_at"
            " FROM pipeline.run_tombstones WHERE id = %s",
            (run_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    completed = row["completed_at"]
    return Tombstone(
        id=str(row["id"]),
        repository=row["repository"],
        branch=row["branch"],
        commit_sha=row["commit_sha"],
        status=row["status"],
        created_at=row["created_at"].isoformat(),
        completed_at=completed.isoformat() if completed is not None else None,
        deleted_at=row["deleted_at"].isoformat(),
    )


class RunRetention:
    """The periodic sweep; :meth:`sweep` is one full pass (also what tests call)."""

    def __init__(self, pool: Pool, s3: S3, horizon: float, interval: float, batch: int) -> None:
        self.pool = pool
        self.s3 = s3
        self.horizon = horizon
        self.interval = interval
        self.batch = batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="pipeline.retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                deleted = await self.sweep()
                if deleted:
                    log.info("pipeline.retention_swept", deleted=deleted)
            except Exception as exc:  # noqa: BLE001 - an outage must not end the loop; next pass retries
                log.warning("pipeline.retention_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Delete batches until none is full; return how many runs were deleted."""
        total = 0
        while True:
            deleted = await self._batch()
            total += deleted
            if deleted < self.batch:
                return total

    async def _batch(self) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_PICK, (self.horizon, self.batch))
            ids = [row["id"] for row in await cur.fetchall()]
            if not ids:
                return 0
            await self._delete_objects(ids)
            await conn.execute(_DELETE, (ids,))
        RUNS_DELETED.inc(len(ids))
        return len(ids)

    async def _delete_objects(self, run_ids: list[Any]) -> None:
        async with self.s3.client() as client:
            paginator = client.get_paginator("list_objects_v2")
            for run_id in run_ids:
                async for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=f"pipeline-runs/{run_id}/"):
                    keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                    if keys:
                        await client.delete_objects(Bucket=self.s3.bucket, Delete={"Objects": keys, "Quiet": True})
