"""SQL access to schema ``approval``; the unit of work owns the transaction and the outbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from forge_common.events import EventData
from forge_common.outbox import add_event

from .domain import Approval

__all__ = ["SCHEMA", "PgApprovals", "Transaction", "UnitOfWork"]

SCHEMA = "approval"

_COLUMNS = (
    "id, release_id, environment, approver, justification, approved_at, expires_at, status, "
    "revoked_by, revoked_at, revocation_reason, repository, project"
)

_SQL_EXPIRE_LAPSED = """
UPDATE approval.approvals SET status = 'expired'
 WHERE release_id = %(release_id)s AND environment = %(environment)s
   AND status = 'active' AND expires_at <= %(now)s
"""

# ON CONFLICT names the partial unique index's predicate: a concurrent or existing active
# approval of the same (release, environment) makes the insert a no-op instead of an error.
_SQL_INSERT = f"""
INSERT INTO approval.approvals ({_COLUMNS})
VALUES (%(id)s, %(release_id)s, %(environment)s, %(approver)s, %(justification)s, %(approved_at)s,
        %(expires_at)s, 'active', NULL, NULL, NULL, %(repository)s, %(project)s)
ON CONFLICT (release_id, environment) WHERE status = 'active' DO NOTHING
RETURNING id
"""

_SQL_ACTIVE = f"""
SELECT {_COLUMNS} FROM approval.approvals
 WHERE release_id = %(release_id)s AND environment = %(environment)s AND status = 'active'
"""

# The stored-active row first (there is at most one), else the most recent approval.
_SQL_CURRENT = f"""
SELECT {_COLUMNS} FROM approval.approvals
 WHERE release_id = %(release_id)s AND environment = %(environment)s
 ORDER BY (status = 'active') DESC, approved_at DESC, id DESC
 LIMIT 1
"""

_SQL_GET = f"SELECT {_COLUMNS} FROM approval.approvals WHERE id = %(id)s"

_SQL_REVOKE = """
UPDATE approval.approvals
   SET status = 'revoked', revoked_by = %(revoked_by)s, revoked_at = %(revoked_at)s,
       revocation_reason = %(reason)s
 WHERE id = %(id)s
"""


def _approval(row: dict[str, Any]) -> Approval:
    return Approval(
        id=str(row["id"]),
        release_id=str(row["release_id"]),
        environment=row["environment"],
        approver=row["approver"],
        justification=row["justification"],
        approved_at=row["approved_at"].astimezone(dt.UTC),
        expires_at=row["expires_at"].astimezone(dt.UTC),
        stored_status=row["status"],
        revoked_by=row["revoked_by"],
        revoked_at=row["revoked_at"].astimezone(dt.UTC) if row["revoked_at"] else None,
        revocation_reason=row["revocation_reason"],
        repository=row["repository"],
        project=row["project"],
    )


class PgApprovals:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def expire_lapsed(self, release_id: str, environment: str, now: dt.datetime) -> int:
        """Write ``expired`` on a lapsed active row so a new approval of the pair can be stored."""
        cur = await self.conn.execute(
            _SQL_EXPIRE_LAPSED, {"release_id": release_id, "environment": environment, "now": now}
        )
        return cur.rowcount

    async def insert_if_none_active(self, approval: Approval) -> bool:
        cur = await self.conn.execute(
            _SQL_INSERT,
            {
                "id": approval.id,
                "release_id": approval.release_id,
                "environment": approval.environment,
                "approver": approval.approver,
                "justification": approval.justification,
                "approved_at": approval.approved_at,
                "expires_at": approval.expires_at,
                "repository": approval.repository,
                "project": approval.project,
            },
        )
        return await cur.fetchone() is not None

    async def active(self, release_id: str, environment: str) -> Approval | None:
        cur = await self.conn.execute(_SQL_ACTIVE, {"release_id": release_id, "environment": environment})
        row = await cur.fetchone()
        return _approval(row) if row else None

    async def current(self, release_id: str, environment: str) -> Approval | None:
        cur = await self.conn.execute(_SQL_CURRENT, {"release_id": release_id, "environment": environment})
        row = await cur.fetchone()
        return _approval(row) if row else None

    async def get(self, approval_id: str, *, for_update: bool = False) -> Approval | None:
        cur = await self.conn.execute(_SQL_GET + (" FOR UPDATE" if for_update else ""), {"id": approval_id})
        row = await cur.fetchone()
        return _approval(row) if row else None

    async def save_revocation(self, approval: Approval) -> None:
        await self.conn.execute(
            _SQL_REVOKE,
            {
                "id": approval.id,
                "revoked_by": approval.revoked_by,
                "revoked_at": approval.revoked_at,
                "reason": approval.revocation_reason,
            },
        )


class Transaction:
    """One database transaction: the approvals it changes and the events it records."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.approvals = PgApprovals(conn)

    async def record(self, event: EventData) -> None:
        await add_event(self.conn, SCHEMA, event)


class UnitOfWork:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Transaction]:
        """Commits when the block ends normally, rolls back when it raises."""
        async with self.pool.connection() as conn, conn.transaction():
            yield Transaction(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PgApprovals]:
        async with self.pool.connection() as conn:
            yield PgApprovals(conn)
