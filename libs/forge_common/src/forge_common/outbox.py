"""Transactional outbox.

A service writes its events with :func:`add_event` on the same connection, inside the same
transaction, as the state change they describe. :class:`OutboxRelay` publishes committed rows
to JetStream with the event id as ``Nats-Msg-Id`` (so a re-publish after a crash is dropped by
the stream's duplicate window), then marks them sent. While NATS is unreachable the rows wait
and the relay retries with backoff: events are delayed, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
import structlog
from nats.js import JetStreamContext

from .events import Envelope, EventData, envelope
from .nats import Names

if TYPE_CHECKING:  # db imports this module (outbox_ddl): a runtime import would be circular
    from .db import Pool

__all__ = ["OutboxRelay", "add_event", "add_message", "outbox_ddl"]

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()


def outbox_ddl(schema: str) -> str:
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


async def add_message(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    message_id: str,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Queue any message (event or job) for publication once the transaction commits."""
    await conn.execute(
        f'INSERT INTO "{schema}".outbox (message_id, subject, payload, headers) VALUES (%s, %s, %s, %s)',
        (message_id, subject, payload, json.dumps(dict(headers or {}))),
    )


async def add_event(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    data: EventData,
    headers: Mapping[str, str] | None = None,
) -> Envelope:
    env = envelope(data)
    await add_message(conn, schema, env.event_id, f"events.{env.event_type}", _encoder.encode(env), headers)
    return env


class OutboxRelay:
    batch_size = 200
    poll_interval = 1.0

    def __init__(
        self,
        pool: Pool,
        database_url: str,
        schema: str,
        js: JetStreamContext,
        names: Names,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.schema = schema
        self.js = js
        self.names = names
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"outbox-listen-{self.schema}"),
            asyncio.create_task(self._run(), name=f"outbox-relay-{self.schema}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        channel = f"forge_outbox_{self.schema}"
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f'LISTEN "{channel}"')
                    self._wake.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening through database restarts
                log.warning("outbox.listen_failed", schema=self.schema, error=str(exc))
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                sent, complete = await self.publish_batch()
                backoff = 0.1
                if sent and complete:
                    continue
                if not complete:
                    await asyncio.sleep(backoff)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or Postgres down: wait and retry
                log.warning("outbox.publish_failed", schema=self.schema, error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def publish_batch(self) -> tuple[int, bool]:
        """Publish one batch; returns (rows sent, whether every selected row was sent)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f'SELECT id, message_id, subject, payload, headers FROM "{self.schema}".outbox '
                "WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.batch_size,),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0, True
            sent: list[int] = []
            error: Exception | None = None
            for row in rows:
                headers = {"Nats-Msg-Id": str(row["message_id"]), **(row["headers"] or {})}
                try:
                    await self.js.publish(
                        self.names.subject(row["subject"]), bytes(row["payload"]), headers=headers, timeout=2.0
                    )
                except Exception as exc:  # noqa: BLE001 - stop at the first failure, keep order
                    error = exc
                    break
                sent.append(row["id"])
            if sent:
                await conn.execute(
                    f'UPDATE "{self.schema}".outbox SET published_at = now() WHERE id = ANY(%s)', (sent,)
                )
                self.published += len(sent)
        if error is not None:
            log.warning("outbox.publish_interrupted", schema=self.schema, sent=len(sent), error=str(error))
            return len(sent), False
        return len(sent), True

    async def purge(self, older_than_days: int = 7) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f'DELETE FROM "{self.schema}".outbox WHERE published_at < now() - make_interval(days => %s)',
                (older_than_days,),
            )
            return cur.rowcount
