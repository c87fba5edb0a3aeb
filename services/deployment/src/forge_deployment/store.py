"""SQL of the ``deployment`` schema. The caller's unit of work owns the transaction; events go to
the outbox on the same connection.

Targets are matched on ``repository_key``/``project_key`` (lower-cased, generated columns that
the indexes are on): repository and project names are case-insensitive; the rows keep the
names as the release service gave them."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg.rows import DictRow

from forge_common import github
from forge_common.db import Pool
from forge_common.events import EventData
from forge_common.outbox import add_event

from .domain import Activated, Deployment, Landed, NewDeployment, PendingDeployment, Target

__all__ = ["DeploymentStore", "unit_of_work"]

SCHEMA = "deployment"
# pg_advisory_xact_lock key serializing "count pending, then insert" across replicas.
_PENDING_LIMIT_LOCK = 0x6465706C6F79  # "deploy"

_DEPLOYMENT = (
    "id::text AS id, release_id::text AS release_id, release_number, repository, project, environment, "
    "status::text AS status, deployed_at, deployed_by, gitops_commit_sha, reconciled_at, "
    "approval_id::text AS approval_id, error"
)


def _deployment(row: DictRow) -> Deployment:
    return Deployment(
        id=row["id"],
        release_id=row["release_id"],
        release_number=int(row["release_number"]),
        repository=row["repository"],
        project=row["project"],
        environment=row["environment"],
        status=row["status"],
        deployed_at=row["deployed_at"],
        deployed_by=row["deployed_by"],
        gitops_commit_sha=row["gitops_commit_sha"],
        reconciled_at=row["reconciled_at"],
        approval_id=row["approval_id"],
        error=row["error"],
    )


class DeploymentStore:
    def __init__(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        self.conn = conn

    async def record(self, event: EventData) -> None:
        """Record ``event`` in the outbox, in this transaction (published after the commit)."""
        await add_event(self.conn, SCHEMA, event)

    async def report_to_github(self, *requests: github.GitHubRequest) -> None:
        """Queue GitHub calls with this transaction's change (sent after commit, in order)."""
        for request in requests:
            await github.enqueue(self.conn, SCHEMA, request)

    async def reserve(self, d: NewDeployment, max_pending: int) -> int | None:
        """Insert ``d`` as pending unless ``max_pending`` are pending already.

        Returns None when reserved, else the number pending. The transaction-scoped advisory
        lock makes count-then-insert atomic across every replica: the 51st waits for the 50th
        to commit and then sees it.
        """
        await self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PENDING_LIMIT_LOCK,))
        cur = await self.conn.execute("SELECT count(*) AS n FROM deployment.deployments WHERE status = 'pending'")
        row = await cur.fetchone()
        pending = int(row["n"]) if row else 0
        if pending >= max_pending:
            return pending
        r = d.release
        await self.conn.execute(
            """
            INSERT INTO deployment.deployments (
                id, release_id, repository, project, release_number, release_commit_sha, release_oci_uri,
                environment, status, deployed_at, deployed_by, approval_id, gitops_path)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s)
            """,
            (
                d.id,
                r.id,
                r.repository,
                r.project,
                r.release_number,
                r.commit_sha,
                r.oci_uri,
                d.environment,
                d.deployed_at,
                d.deployed_by,
                d.approval_id,
                d.path,
            ),
        )
        return None

    async def record_commit(self, deployment_id: str, sha: str) -> Landed | None:
        """Record the landed commit once; None when it was recorded already (by the reconciler)."""
        cur = await self.conn.execute(
            "UPDATE deployment.deployments SET gitops_commit_sha = %s, committed_at = now() "
            "WHERE id = %s AND gitops_commit_sha IS NULL "
            "RETURNING release_id::text AS release_id, environment, deployed_by, repository, project",
            (sha, deployment_id),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return Landed(row["release_id"], row["environment"], row["deployed_by"], row["repository"], row["project"])

    async def mark_failed(self, deployment_id: str, error: str) -> bool:
        """Fail a pending deployment; False when it is not pending (any more)."""
        cur = await self.conn.execute(
            "UPDATE deployment.deployments SET status = 'failed', error = %s "
            "WHERE id = %s AND status = 'pending' RETURNING id",
            (error, deployment_id),
        )
        return await cur.fetchone() is not None

    async def current(self, target: Target) -> Deployment | None:
        cur = await self.conn.execute(
            f"SELECT {_DEPLOYMENT} FROM deployment.deployments "
            "WHERE environment = %s AND repository_key = lower(%s) AND project_key = lower(%s) AND status = 'active'",
            (target.environment, target.repository, target.project),
        )
        row = await cur.fetchone()
        return _deployment(row) if row else None

    async def active_projects(self, environment: str, repository: str, limit: int) -> list[str]:
        """The projects of a repository with an active deployment in the environment (by name),
        at most ``limit``: a range of ``deployments_one_active_idx``."""
        cur = await self.conn.execute(
            "SELECT project FROM deployment.deployments "
            "WHERE environment = %s AND repository_key = lower(%s) AND status = 'active' "
            "ORDER BY project_key LIMIT %s",
            (environment, repository, limit),
        )
        return [str(row["project"]) for row in await cur.fetchall()]

    async def history(
        self, target: Target, limit: int, offset: int, before: tuple[dt.datetime, str] | None = None
    ) -> tuple[list[Deployment], int]:
        """One page, newest first, and the total; ``before``: keyset continuation (a cursor)."""
        args = (target.environment, target.repository, target.project)
        after_at, after_id = before if before is not None else (None, None)
        cur = await self.conn.execute(
            "SELECT count(*) AS n FROM deployment.deployments WHERE environment = %s AND repository_key = lower(%s) AND project_key = lower(%s)",
            args,
        )
        row = await cur.fetchone()
        total = int(row["n"]) if row else 0
        cur = await self.conn.execute(
            f"SELECT {_DEPLOYMENT} FROM deployment.deployments "
            "WHERE environment = %s AND repository_key = lower(%s) AND project_key = lower(%s) "
            "AND (%s::timestamptz IS NULL OR (deployed_at, id) < (%s::timestamptz, %s::uuid)) "
            "ORDER BY deployed_at DESC, id DESC LIMIT %s OFFSET %s",
            (*args, after_at, after_at, after_id, limit, offset),
        )
        return [_deployment(row) for row in await cur.fetchall()], total

    # --- reconciler -------------------------------------------------------------------------

    async def expire_pending(self, older_than: dt.datetime, limit: int = 500) -> list[tuple[str, Target]]:
        """Fail pending deployments created before ``older_than`` (skipping rows others hold)."""
        cur = await self.conn.execute(
            """
            UPDATE deployment.deployments d SET status = 'failed', error = %s
            WHERE d.id IN (
                SELECT id FROM deployment.deployments
                WHERE status = 'pending' AND deployed_at < %s
                ORDER BY deployed_at LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING d.id::text AS id, d.environment, d.repository, d.project
            """,
            ("not reconciled in time", older_than, limit),
        )
        return [(r["id"], Target(r["environment"], r["repository"], r["project"])) for r in await cur.fetchall()]

    async def set_error(self, deployment_id: str, error: str) -> None:
        await self.conn.execute("UPDATE deployment.deployments SET error = %s WHERE id = %s", (error, deployment_id))

    async def pending_targets(self, orphaned_before: dt.datetime, limit: int = 500) -> list[Target]:
        """Targets with pending deployments that have a commit, or have lacked one for too long."""
        cur = await self.conn.execute(
            "SELECT DISTINCT ON (environment, repository_key, project_key) environment, repository, project "
            "FROM deployment.deployments "
            "WHERE status = 'pending' AND (gitops_commit_sha IS NOT NULL OR deployed_at < %s) LIMIT %s",
            (orphaned_before, limit),
        )
        return [Target(r["environment"], r["repository"], r["project"]) for r in await cur.fetchall()]

    async def lock_target(self, target: Target) -> bool:
        """Try to own ``target`` for this transaction; False when another replica does."""
        cur = await self.conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS ok", (f"forge-deployment:{target.key}",)
        )
        row = await cur.fetchone()
        return bool(row and row["ok"])

    async def lock_pending(self, target: Target, orphaned_before: dt.datetime) -> list[PendingDeployment]:
        cur = await self.conn.execute(
            "SELECT id, gitops_commit_sha FROM deployment.deployments "
            "WHERE environment = %s AND repository_key = lower(%s) AND project_key = lower(%s) "
            "AND status = 'pending' AND (gitops_commit_sha IS NOT NULL OR deployed_at < %s) "
            "ORDER BY deployed_at FOR UPDATE SKIP LOCKED",
            (target.environment, target.repository, target.project, orphaned_before),
        )
        return [PendingDeployment(str(r["id"]), r["gitops_commit_sha"]) for r in await cur.fetchall()]

    async def activate(self, deployment_id: str, target: Target) -> tuple[Activated | None, list[str]]:
        """Make ``deployment_id`` the active one; the previous active becomes superseded."""
        cur = await self.conn.execute(
            "UPDATE deployment.deployments SET status = 'superseded', superseded_at = now(), superseded_by = %s "
            "WHERE environment = %s AND repository_key = lower(%s) AND project_key = lower(%s) AND status = 'active' AND id <> %s "
            "RETURNING id",
            (deployment_id, target.environment, target.repository, target.project, deployment_id),
        )
        superseded = [str(r["id"]) for r in await cur.fetchall()]
        cur = await self.conn.execute(
            "UPDATE deployment.deployments SET status = 'active', reconciled_at = now(), error = NULL "
            "WHERE id = %s AND status = 'pending' "
            "RETURNING environment, deployed_at, committed_at, reconciled_at, repository, project",
            (deployment_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None, superseded
        activated = Activated(
            row["environment"],
            row["deployed_at"],
            row["committed_at"],
            row["reconciled_at"],
            row["repository"],
            row["project"],
        )
        return activated, superseded

    async def overtake(self, deployment_ids: list[str], by: str | None) -> list[str]:
        """Pending deployments overwritten in GitOps before they were applied: superseded."""
        if not deployment_ids:
            return []
        cur = await self.conn.execute(
            "UPDATE deployment.deployments SET status = 'superseded', superseded_at = now(), superseded_by = %s "
            "WHERE id = ANY(%s) AND status = 'pending' RETURNING id",
            (by, deployment_ids),
        )
        return [str(r["id"]) for r in await cur.fetchall()]


@asynccontextmanager
async def unit_of_work(pool: Pool) -> AsyncIterator[DeploymentStore]:
    """One transaction: state changes and their outbox events commit together or not at all."""
    async with pool.connection() as conn, conn.transaction():
        yield DeploymentStore(conn)
