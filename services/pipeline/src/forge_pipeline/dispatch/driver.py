"""What driving one run needs: its reply inbox, the job queue, and the ways a run ends early.

The steps of driving (discovery, phase groups, release) live in their own modules and take a
:class:`RunDriver`; ``dispatcher.py`` runs them in order.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from forge_common import jobs
from forge_common.db import Pool
from forge_common.jobs import JobSettings
from forge_common.results import is_result_ref, resolve_result
from forge_common.runtime import Runtime
from forge_common.tracing import extract
from forge_pipeline import execution_store, service

from .queue import JobQueue
from .settings import DispatcherSettings

__all__ = ["RunDriver", "RunEnded", "format_seconds"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.dispatcher")

# Replies to job inboxes that were dropped: "unexpected" (no job of this run waits for that id:
# late, duplicate or made up), "malformed" (not a reply), "mismatch" (job id or dispatch attempt
# do not match the job's: not from the worker that holds the job).
REPLIES_REJECTED = Counter(
    "forge_pipeline_job_replies_rejected_total", "Job replies dropped by the dispatcher", ["reason"]
)


class RunEnded(Exception):
    """The run finished (failed, cancelled or completed elsewhere): stop driving it."""


class RunDriver:
    def __init__(
        self,
        run_id: str,
        runtime: Runtime,
        queue: JobQueue,
        owner: str,
        settings: DispatcherSettings,
        job_settings: JobSettings,
    ) -> None:
        self.run_id = run_id
        self.runtime = runtime
        self.pool: Pool = runtime.pool
        self.queue = queue
        self.owner = owner
        self.settings = settings
        self.job_settings = job_settings
        self.waiters: dict[str, asyncio.Future[bytes]] = {}
        self.attempts: dict[str, str] = {}
        self._inbox: Subscription | None = None

    async def open_inbox(self) -> None:
        """Replies go to an inbox derived from run and job ids, so a driver that took the run
        over hears replies to jobs its predecessor sent."""
        subject = jobs.inbox_subject(self.runtime.names, self.run_id, "*")
        self._inbox = await self.runtime.nc.subscribe(subject, cb=self._on_reply)

    async def close(self) -> None:
        if self._inbox is not None:
            with contextlib.suppress(Exception):
                await self._inbox.unsubscribe()
        for waiter in self.waiters.values():
            waiter.cancel()
        self.queue.forget(self.run_id)

    async def _on_reply(self, msg: Msg) -> None:
        """Accept a reply only for a job this driver waits for, naming that job and its
        dispatch attempt; drop (and count) anything else."""
        job_id = msg.subject.rsplit(".", 1)[-1]
        attributes = {"forge.run_id": self.run_id, "forge.job_id": job_id}
        # A reply carries the worker's trace context: this span is a child of the job's span.
        with _tracer.start_as_current_span(
            "job reply", context=extract(msg.headers), kind=SpanKind.CONSUMER, attributes=attributes
        ):
            waiter = self.waiters.get(job_id)
            if waiter is None or waiter.done():
                _reject("unexpected", self.run_id, job_id)
                return
            try:
                value = msgspec.json.decode(msg.data)
                stored = is_result_ref(value)
                if stored:
                    value = await resolve_result(self.runtime.s3, msg.data)
            except Exception:  # noqa: BLE001 - not JSON, or a result reference that does not resolve
                _reject("malformed", self.run_id, job_id)
                return
            if not jobs.reply_matches(value, job_id, self.attempts.get(job_id, "")):
                _reject("mismatch", self.run_id, job_id)
                return
            if not waiter.done():
                self.queue.answered(self.run_id, job_id)
                waiter.set_result(msgspec.json.encode(value) if stored else msg.data)

    def waiter(self, job_id: str, attempt: str) -> asyncio.Future[bytes]:
        """The future the reply to ``job_id`` (dispatch ``attempt``) resolves; create it before
        publishing the job."""
        waiter = self.waiters.get(job_id)
        if waiter is None or waiter.done():
            waiter = asyncio.get_running_loop().create_future()
            self.waiters[job_id] = waiter
        self.attempts[job_id] = attempt
        return waiter

    async def fail(self, message: str, phase: str | None) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await service.fail_run(conn, self.run_id, message, phase)
        await self.queue.cancel_workers(self.run_id)

    async def fail_if_active(self, why: str) -> None:
        async with self.pool.connection() as conn:
            status = await execution_store.run_status(conn, self.run_id)
        if status in ("pending", "running"):
            await self.fail(why, None)


def _reject(reason: str, run_id: str, job_id: str) -> None:
    REPLIES_REJECTED.labels(reason).inc()
    # A late reply (the run moved on, or a predecessor's job answered twice) is ordinary.
    log_fn = log.info if reason == "unexpected" else log.warning
    log_fn("dispatcher.reply_rejected", reason=reason, run_id=run_id, job_id=job_id)


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"
