"""Live status and logs: ``GET /v1/runs/{id}/events`` and ``GET /v1/steps/{id}/logs``.

Status changes are rows of ``pipeline.run_changes``, written by triggers in the transaction of
the change (migration 0010) and announced by ``NOTIFY forge_run_changes`` with the run id.
One LISTEN connection per process (:class:`ChangeHub`) wakes the streams of that run; a stream
then reads ``seq > last`` from the run's index. A missed notification costs at most one poll
interval, never an event: the table, not the notification, is the source of truth. Logs are
the step's object in S3, rewritten by the worker while the step runs; following it is reading
from the last offset whenever the worker may have flushed, until the step has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg.rows import tuple_row

from forge_common import sse
from forge_common.db import Pool
from forge_common.errors import ForgeError, InvalidRequest, NotFound

__all__ = [
    "CHANGES",
    "HUB_KEY",
    "ChangeHub",
    "LogRange",
    "PhaseChange",
    "RunChange",
    "StepChange",
    "StepLog",
    "TaskChange",
    "log_key",
    "parse_range",
    "run_events",
    "step_log",
]

log = structlog.get_logger(__name__)

HUB_KEY = "pipeline.live"
CHANNEL = "forge_run_changes"
TERMINAL_RUN = frozenset({"success", "failed", "cancelled"})
TERMINAL_STEP = frozenset({"success", "failed", "skipped", "cancelled"})
_BATCH = 500


class ChangeHub:
    """Wakes the streams of a run when ``forge_run_changes`` names it."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="run-changes-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def subscribe(self, run_id: str) -> Any:
        wake = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(wake)
        try:
            yield wake
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[run_id]

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for wake in waiters:
                wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake_all()  # anything committed while not listening
                    async for notify in conn.notifies():
                        for wake in self._waiters.get(notify.payload, ()):
                            wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening through database restarts
                log.warning("live.listen_failed", error=str(exc))
                self._wake_all()
                await asyncio.sleep(1.0)


async def _wait(wake: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout)
    wake.clear()


# --- GET /v1/runs/{id}/events --------------------------------------------------------------------


class RunChange(msgspec.Struct, kw_only=True):
    """The data of a ``run`` event after the first (a status change of the run)."""

    id: str
    status: str
    started_at: str | None
    completed_at: str | None


class PhaseChange(RunChange, kw_only=True):
    """The data of a ``phase`` event."""

    name: str
    group: int


class TaskChange(RunChange, kw_only=True):
    """The data of a ``task`` event."""

    phase_id: str
    project_name: str


class StepChange(RunChange, kw_only=True):
    """The data of a ``step`` event."""

    task_id: str
    name: str
    position: int
    exit_code: int | None


# What migration 0010's trigger writes into run_changes.data, by kind (documented, not decoded:
# the stream relays the rows as they are).
CHANGES = {"run": RunChange, "phase": PhaseChange, "task": TaskChange, "step": StepChange}

_SQL_CHANGES = """
SELECT seq, kind, data::text FROM pipeline.run_changes
WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s
"""
_SQL_RUN_STATE = "SELECT status::text, (SELECT max(seq) FROM pipeline.run_changes WHERE run_id = %s) FROM pipeline.runs WHERE id = %s"


async def run_state(pool: Pool, run_id: str) -> tuple[str, int] | None:
    """``(status, last change seq)`` of a run; ``None`` when there is no such run."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_SQL_RUN_STATE, (run_id, run_id))
        row = await cur.fetchone()
    return None if row is None else (str(row[0]), int(row[1] or 0))


async def snapshot(pool: Pool, run_id: str, tree: Any) -> tuple[int, bytes]:
    """The run's tree and the seq of the last change it includes, read in one snapshot so the
    changes replayed after it (``seq >`` that) are exactly those it does not show."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_SQL_RUN_STATE, (run_id, run_id))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
        body: bytes = await tree(conn, run_id)
    return int(row[1] or 0), body


async def run_events(
    pool: Pool, hub: ChangeHub, run_id: str, after: int | None, tree: Any, poll: float = 5.0
) -> AsyncIterator[bytes]:
    """The SSE events of one run: its tree first (unless resuming after ``after``), then each
    change in order, ending after the run's terminal status."""
    with hub.subscribe(run_id) as wake:
        if after is None:
            last, body = await snapshot(pool, run_id, tree)
            yield sse.event(body, "run", last)
            state = await run_state(pool, run_id)
            if state is not None and state[0] in TERMINAL_RUN and state[1] <= last:
                return
        else:
            last = after
        while True:
            async with pool.connection() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute(_SQL_CHANGES, (run_id, last, _BATCH))
                rows = await cur.fetchall()
            finished = False
            for seq, kind, data in rows:
                last = seq
                yield sse.event(data, kind, seq)
                if kind == "run" and msgspec.json.decode(data)["status"] in TERMINAL_RUN:
                    finished = True
            if len(rows) == _BATCH:
                continue
            if finished:
                return
            if not rows:
                state = await run_state(pool, run_id)
                if state is None or (state[0] in TERMINAL_RUN and state[1] <= last):
                    return  # deleted, or final and every change already sent (a resume)
            await _wait(wake, poll)


# --- GET /v1/steps/{id}/logs ---------------------------------------------------------------------


def log_key(run_id: str, phase: str, project: str, step: str) -> str:
    """Where the worker writes a step's log (the spec's layout; forge_worker.steps.log_key)."""
    return f"pipeline-runs/{run_id}/logs/{phase}/{project}/{step}.log"


class StepLog(msgspec.Struct, frozen=True):
    run_id: str
    status: str
    key: str


_SQL_STEP_LOG = """
SELECT s.run_id::text, s.status::text, s.logs_s3_key, p.name, t.project_name, s.name
FROM pipeline.steps s JOIN pipeline.tasks t ON t.id = s.task_id JOIN pipeline.phases p ON p.id = t.phase_id
WHERE s.id = %s
"""


async def step_log(pool: Pool, step_id: str) -> StepLog:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_SQL_STEP_LOG, (step_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"step {step_id} not found", {"id": step_id})
    run_id, status, stored, phase, project, name = row
    return StepLog(run_id=run_id, status=status, key=stored or log_key(run_id, phase, project, name))


class LogRange(msgspec.Struct, frozen=True):
    start: int
    end: int | None  # inclusive; None: to the end
    suffix: int | None = None  # bytes=-N: the last N bytes


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None) -> LogRange | None:
    """One ``bytes=`` range (RFC 9110); several ranges or another unit are a 400."""
    if header is None:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if m is None or (m[1] == "" and m[2] == ""):
        raise InvalidRequest(
            "Range must be one byte range: bytes=START-[END] or bytes=-SUFFIX",
            {"field": "Range", "value": header[:100]},
        )
    if m[1] == "":
        return LogRange(start=0, end=None, suffix=int(m[2]))
    start = int(m[1])
    end = int(m[2]) if m[2] else None
    if end is not None and end < start:
        raise InvalidRequest("Range end is before its start", {"field": "Range", "value": header[:100]})
    return LogRange(start=start, end=end)


class RangeNotSatisfiable(ForgeError):
    status = 416
    code = "range_not_satisfiable"


async def read_object(client: Any, bucket: str, key: str, byte_range: str | None = None) -> tuple[bytes, int] | None:
    """``(bytes, total size)`` of an object (or of ``byte_range`` of it); ``None`` when absent.
    Raises :class:`RangeNotSatisfiable` when the range starts past the end."""
    kwargs = {"Bucket": bucket, "Key": key}
    if byte_range is not None:
        kwargs["Range"] = byte_range
    try:
        obj = await client.get_object(**kwargs)
    except client.exceptions.NoSuchKey:
        return None
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            return None
        if code == "InvalidRange":
            raise RangeNotSatisfiable("the range starts past the end of the log", {"field": "Range"}) from None
        raise
    async with obj["Body"] as body:
        data: bytes = await body.read()
    content_range = obj.get("ContentRange")
    total = int(content_range.rpartition("/")[2]) if content_range else len(data)
    return data, total


async def follow_log(
    pool: Pool, hub: ChangeHub, s3: Any, step_id: str, start: int, poll: float
) -> AsyncIterator[bytes]:
    """The log from ``start`` as it grows, ending once the step has finished and its final
    log (uploaded by the worker before it reports the outcome) has been sent."""
    offset = start
    info = await step_log(pool, step_id)
    with hub.subscribe(info.run_id) as wake:
        async with s3.client() as client:
            while True:
                # Status first: when it is final here, the object read next is the final log.
                info = await step_log(pool, step_id)
                try:
                    got = await read_object(client, s3.bucket, info.key, f"bytes={offset}-")
                except RangeNotSatisfiable:
                    got = None
                if got is not None and got[0]:
                    offset += len(got[0])
                    yield got[0]
                if info.status in TERMINAL_STEP:
                    return
                await _wait(wake, poll)
