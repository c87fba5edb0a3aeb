"""Postgres pools and the migration runner.

Migrations are ordered ``NNNN_name.sql`` files per service schema. Each file runs in its own
transaction and is recorded with a checksum in ``<schema>.schema_migrations``; a Postgres
advisory lock per schema makes concurrent start-ups of several replicas safe (the second
waits, then finds nothing left to do). An applied file that changed is refused.

Every service schema also carries the transactional outbox table (see ``outbox.py``); its DDL
lives here, with the runner that installs it, so that ``outbox`` depends on ``db`` and not the
other way round.
"""

from __future__ import annotations

import hashlib
import re
import select
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
import structlog
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

__all__ = [
    "Connection",
    "MigrationError",
    "Pool",
    "connection_context",
    "create_pool",
    "migrate",
    "migration_files",
    "on_commit",
]

log = structlog.get_logger(__name__)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


def migration_files(package: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every migration file in ``package``, in order."""
    root: Traversable = resources.files(package)
    found: list[tuple[int, str, str]] = []
    for entry in root.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {package}")
    return found


def _outbox_ddl(schema: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS "{schema}".outbox (
    id bigserial PRIMARY KEY,
    message_id uuid NOT NULL UNIQUE,
    subject text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON "{schema}".outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON "{schema}".outbox (published_at) WHERE published_at IS NOT NULL;
CREATE OR REPLACE FUNCTION "{schema}".outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forge_outbox_{schema}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS outbox_notify ON "{schema}".outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON "{schema}".outbox
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".outbox_notify();
"""


async def migrate(database_url: str, schema: str, package: str) -> list[int]:
    """Apply pending migrations of ``package`` to ``schema``; return the versions applied."""
    files = migration_files(package)
    lock_key = int.from_bytes(hashlib.sha256(f"forge-migrate:{schema}".encode()).digest()[:8], "big", signed=True)
    applied_now: list[int] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(_outbox_ddl(schema).encode())
            cur = await conn.execute(f'SELECT version, checksum FROM "{schema}".schema_migrations')
            done = {row[0]: row[1] for row in await cur.fetchall()}
            for version, name, sql in files:
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        raise MigrationError(
                            f"migration {schema}/{version:04d}_{name}.sql changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(sql.encode())
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version, name, checksum) VALUES (%s, %s, %s)',
                        (version, name, checksum),
                    )
                applied_now.append(version)
                log.info("db.migration_applied", schema=schema, version=version, name=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
    return applied_now


class Connection(psycopg.AsyncConnection[DictRow]):
    """The pools' connection: runs the callbacks given to :func:`on_commit` once its outermost
    ``transaction()`` block has committed (and drops them when it rolls back)."""

    _after_commit: list[list[Callable[[], None]]]

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[psycopg.AsyncTransaction]:
        stack = self.__dict__.setdefault("_after_commit", [])
        stack.append([])
        try:
            async with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
        except BaseException:
            stack.pop()
            raise
        done = stack.pop()
        if stack:  # a savepoint: its callbacks wait for the outer transaction
            stack[-1].extend(done)
        elif not force_rollback:
            for callback in done:
                try:
                    callback()
                except Exception:
                    log.exception("db.after_commit_failed")


def on_commit(conn: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` after the transaction ``conn`` is in commits (a metric counted only for
    a change that happened). Outside a ``transaction()`` block, or on a connection not from a
    Forge pool, it runs at once."""
    stack = getattr(conn, "__dict__", {}).get("_after_commit")
    if stack:
        stack[-1].append(callback)
    else:
        callback()


def connection_context(conn: Any) -> Mapping[str, Any]:
    """What the pool ``conn`` came from says about its service (``create_pool(context=...)``),
    e.g. whether it reports to GitHub; empty for a connection not from a Forge pool."""
    context: Mapping[str, Any] = getattr(conn, "__dict__", {}).get("_forge_context", {})
    return context


Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]


# How long a request waits for a pooled connection, and for a new one to be established, before
# the outage becomes a 503: a few seconds, well inside the gateway's upstream timeout.
POOL_WAIT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3


async def check_pooled(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check before it hands a connection out: one that a Postgres restart cut is
    replaced instead of failing the request that drew it. An idle connection has nothing to
    read; a server that went away has closed the socket (or said why first), which makes it
    readable. So the round trip of the library's check (an empty query) is paid only then,
    not on every checkout, which cost a round trip per transaction (issue 11)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()  # not select(): a busy service's descriptors may pass FD_SETSIZE
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        await AsyncConnectionPool.check_connection(conn)


async def create_pool(
    database_url: str, min_size: int, max_size: int, name: str, *, context: Mapping[str, Any] | None = None
) -> Pool:
    """The service's pool. Connections are in autocommit mode: a read outside ``transaction()``
    is one statement (no implicit ``BEGIN`` sent first and ``ROLLBACK`` when the pool takes it
    back); every change is made inside ``conn.transaction()``, which sends ``BEGIN``/``COMMIT``.
    ``context``: what code handed one of its connections may ask (:func:`connection_context`)."""
    shared = dict(context or {})

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.__dict__["_forge_context"] = shared

    pool: Pool = AsyncConnectionPool(
        database_url,
        connection_class=Connection,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        check=check_pooled,
        configure=configure,
        timeout=POOL_WAIT_TIMEOUT,
        kwargs={"row_factory": dict_row, "autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
    )
    await pool.open(wait=True, timeout=30)
    return pool
