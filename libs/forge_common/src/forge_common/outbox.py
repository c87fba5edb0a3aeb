"""Transactional outbox.

A service writes its events with :func:`add_event` on the same connection, inside the same
transaction, as the state change they describe. :class:`OutboxRelay` publishes committed rows
to JetStream with the event id as ``Nats-Msg-Id`` (so a re-publish after a crash is dropped by
the stream's duplicate window), then marks them sent. While NATS is unreachable the rows wait
and the relay retries with backoff: events are delayed, never lost.

Each row's headers carry the W3C trace context (``traceparent``) of the transaction that wrote
it, stored with the row and published with the message, so a consumer continues the trace of
the request that caused the event. The relay also keeps ``forge_outbox_pending`` (rows waiting)
fresh for every scrape.

Sent rows are kept for ``retention`` (``FORGE_OUTBOX_RETENTION``, seven days by default) as a
record of what was published, then purged by the relay every ``purge_interval``; unsent rows are
never purged, however old.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

import msgspec
import psycopg
import structlog
from nats.js import JetStreamContext

from . import metrics
from .db import Pool
from .events import Envelope, EventData, envelope
from .nats import Names
from .tracing import inject

__all__ = ["DEFAULT_RETENTION", "OutboxRelay", "add_event", "add_message"]

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()

DEFAULT_RETENTION = 7 * 24 * 3600.0


async def add_message(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    message_id: str,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Queue any message (event or job) for publication once the transaction commits; the
    current trace context is added to its headers."""
    stored = dict(headers or {})
    inject(stored)
    await conn.execute(
        f'INSERT INTO "{schema}".outbox (message_id, subject, payload, headers) VALUES (%s, %s, %s, %s)',
        (message_id, subject, payload, json.dumps(stored)),
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
    purge_interval = 3600.0
    # Deleting in bounded batches keeps each transaction (and the rows it locks) short when a
    # long outage or a first purge leaves millions of rows behind.
    purge_batch = 10_000

    def __init__(
        self,
        pool: Pool,
        database_url: str,
        schema: str,
        js: JetStreamContext,
        names: Names,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.schema = schema
        self.js = js
        self.names = names
        self.retention = retention
        self._wake = asyncio.Event()
        self._purge_passes = 0  # started
        self._purge_done = 0  # number of the last pass that completed
        self._purge_finished = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0

    def start(self) -> None:
        metrics.add_refresher(self.refresh_pending)
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"outbox-listen-{self.schema}"),
            asyncio.create_task(self._run(), name=f"outbox-relay-{self.schema}"),
            asyncio.create_task(self._purge_forever(), name=f"outbox-purge-{self.schema}"),
        ]

    async def stop(self) -> None:
        metrics.remove_refresher(self.refresh_pending)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def wake(self) -> None:
        self._wake.set()

    async def refresh_pending(self) -> None:
        """``forge_outbox_pending{service=<schema>}``: rows not yet published (a partial index
        holds exactly those rows)."""
        async with self.pool.connection(timeout=metrics.REFRESH_TIMEOUT) as conn:
            cur = await conn.execute(f'SELECT count(*) AS n FROM "{self.schema}".outbox WHERE published_at IS NULL')
            row = await cur.fetchone()
        metrics.OUTBOX_PENDING.labels(self.schema).set(row["n"] if row else 0)

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

    async def purge(self) -> int:
        """Delete the rows published more than ``retention`` seconds ago; returns how many."""
        removed = 0
        while True:
            async with self.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    f'DELETE FROM "{self.schema}".outbox WHERE id IN ('
                    f'SELECT id FROM "{self.schema}".outbox'
                    " WHERE published_at < now() - make_interval(secs => %s) LIMIT %s)",
                    (self.retention, self.purge_batch),
                )
            removed += cur.rowcount
            if cur.rowcount < self.purge_batch:
                return removed

    async def purged(self) -> None:
        """Wait until a scheduled purge pass that starts after this call has completed."""
        target = self._purge_passes + 1
        async with self._purge_finished:
            await self._purge_finished.wait_for(lambda: self._purge_done >= target)

    async def _purge_forever(self) -> None:
        while True:
            self._purge_passes += 1
            this_pass = self._purge_passes
            try:
                removed = await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres down: the next pass catches up
                log.warning("outbox.purge_failed", schema=self.schema, error=str(exc))
            else:
                if removed:
                    log.info("outbox.purged", schema=self.schema, rows=removed, retention_s=self.retention)
                async with self._purge_finished:
                    self._purge_done = this_pass
                    self._purge_finished.notify_all()
            await asyncio.sleep(self.purge_interval)
