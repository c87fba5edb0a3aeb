"""The watchdog: jobs the database waits for that are no longer on their way to a worker.

Every ``FORGE_DISPATCHER_WATCHDOG_INTERVAL`` each replica looks at the unanswered jobs of the
runs it drives (it holds their leases, so no two replicas look at the same run) and asks
JetStream where each job's message is:

* still in ``PIPELINE_JOBS`` above its consumer's ack floor: queued, or held by a worker that
  sends in-progress heartbeats (JetStream redelivers it if the worker dies): healthy;
* still in the stream at or below the ack floor: the consumer moved past it and will never
  deliver it (the NATS < 2.9.12 purge defect, or any other server fault);
* gone, with no reply: deleted or lost (a worker deletes its job only after replying, and a
  CI task the database already knows as finished is left to the driver's reconciliation).

A job found in one of the last two states on two checks in a row is published again (same job
id and dispatch attempt, new ``Nats-Msg-Id``); after ``MAX_REPUBLISH`` such repairs of one job
its run fails with the reason. So a lost job costs at most two intervals (40 s by default)
instead of the job type's timeout (discovery: 10 minutes). Repairs are counted in
``forge_dispatcher_jobs_repaired_total{job_type,action}``.

Release jobs go through the pipeline outbox and are not watched here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from forge_common import jobs
from forge_common.runtime import Runtime
from forge_pipeline import execution_store
from forge_pipeline.domain import FINISHED

from .queue import JobQueue, QueuedJob

__all__ = ["MAX_REPUBLISH", "REPAIRED", "Watchdog"]

log = structlog.get_logger(__name__)

MAX_REPUBLISH = 3
# Checks in a row a job must be found missing before it is repaired (a reply may be in transit
# while its job is already acknowledged).
STRIKES = 2

REPAIRED = Counter(
    "forge_dispatcher_jobs_repaired_total",
    "Jobs the dispatcher's watchdog found lost or undeliverable: republished, or their run failed",
    ["job_type", "action"],
)


class Watchdog:
    def __init__(
        self,
        runtime: Runtime,
        queue: JobQueue,
        interval: float,
        driven: Callable[[], list[str]],
        fail: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.interval = interval
        self.driven = driven
        self.fail = fail

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or the database away: next time
                log.warning("dispatcher.watchdog_failed", error=str(exc))

    async def check_once(self) -> int:
        """One pass over the driven runs' unanswered jobs; returns how many were repaired."""
        outstanding = [(run_id, job) for run_id in self.driven() for job in self.queue.queued(run_id)]
        if not outstanding:
            return 0
        floors = await self._ack_floors({job.job_type for _, job in outstanding})
        suspects = [(run_id, job) for run_id, job in outstanding if not await self._healthy(job, floors)]
        finished = await self._finished_tasks([job for _, job in suspects])
        repaired = 0
        for run_id, job in suspects:
            if job.job.job_id in finished:
                job.suspect = 0
                continue
            job.suspect += 1
            if job.suspect >= STRIKES:
                await self._repair(run_id, job)
                repaired += 1
        return repaired

    async def _ack_floors(self, job_types: set[jobs.JobType]) -> dict[str, int]:
        stream = self.queue.stream
        floors: dict[str, int] = {}
        for job_type in job_types:
            info = await self.runtime.js.consumer_info(stream, jobs.consumer_name(self.runtime.names, job_type))
            floors[job_type] = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        return floors

    async def _healthy(self, job: QueuedJob, floors: dict[str, int]) -> bool:
        """The job's message is in the stream where its consumer will still deliver it."""
        try:
            await self.runtime.js.get_msg(self.queue.stream, job.seq)
        except NotFoundError:
            return False
        return job.seq > floors.get(job.job_type, 0)

    async def _finished_tasks(self, suspects: list[QueuedJob]) -> set[str]:
        task_ids = [j.job.job_id for j in suspects if j.job_type == "ci"]
        if not task_ids:
            return set()
        async with self.runtime.pool.connection() as conn:
            states = await execution_store.task_states(conn, task_ids)
        return {task_id for task_id, state in states.items() if state.status in FINISHED}

    async def _repair(self, run_id: str, job: QueuedJob) -> None:
        job_id = job.job.job_id
        if job.republished >= MAX_REPUBLISH:
            REPAIRED.labels(job.job_type, "failed").inc()
            log.warning("dispatcher.watchdog_failed_run", run_id=run_id, job_type=job.job_type, job_id=job_id)
            reason = f"the {job.job_type} job was lost by the job queue {job.republished + 1} times"
            with contextlib.suppress(Exception):
                await self.fail(run_id, reason)
            return
        await self.queue.republish(job)
        REPAIRED.labels(job.job_type, "republished").inc()
        log.warning(
            "dispatcher.job_republished",
            run_id=run_id,
            job_type=job.job_type,
            job_id=job_id,
            times=job.republished,
        )
