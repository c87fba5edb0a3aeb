"""The services' Postgres pool (``forge_common.db.create_pool``): a connection whose server side
went away is replaced before it is handed out, a healthy one is handed out without a round trip,
reads outside a transaction leave nothing open, and a transaction still commits or rolls back
as a whole. The test database; backends are ended with ``pg_terminate_backend``."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from forge_common.db import create_pool
from forge_dev.testing import Platform


async def _backend_pid(pool: object) -> int:
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
        return int(row["pid"])


async def test_a_connection_whose_backend_was_ended_is_replaced_on_checkout(platform: Platform) -> None:
    pool = await create_pool(platform.database_url, 1, 1, "pool-test")
    try:
        first = await _backend_pid(pool)
        async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            # The backend is gone once the server no longer lists it.
            for _ in range(200):
                cur = await admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,))
                if await cur.fetchone() is None:
                    break
                await asyncio.sleep(0.01)
        # The request that draws the pool's only connection gets a working one.
        second = await _backend_pid(pool)
        assert second != first
    finally:
        await pool.close()


async def test_reads_leave_no_transaction_open_and_transactions_stay_atomic(platform: Platform) -> None:
    pool = await create_pool(platform.database_url, 1, 1, "pool-test")
    table = f"pool_test_{uuid.uuid4().hex[:8]}"
    try:
        async with pool.connection() as conn:
            await conn.execute(f"CREATE TABLE {table} (n int PRIMARY KEY)")
            await conn.execute(f"SELECT count(*) FROM {table}")
            # Nothing left open on the connection after a read: it goes back to the pool idle.
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

        async def insert_twice() -> None:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                await conn.execute(f"INSERT INTO {table} VALUES (1)")

        with pytest.raises(psycopg.errors.UniqueViolation):
            await insert_twice()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (2)")
            await conn.execute(f"INSERT INTO {table} VALUES (3)")
        async with pool.connection() as conn:
            rows = await (await conn.execute(f"SELECT n FROM {table} ORDER BY n")).fetchall()
        assert [r["n"] for r in rows] == [2, 3]
    finally:
        async with pool.connection() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.close()
