"""The dispatcher's side of the job queue: publish jobs, read replies, drop ended runs' jobs.

Jobs are removed from the work-queue stream one by one, by their stream sequence
(``STREAM.MSG.DELETE``), never by purging a subject: on NATS servers before 2.9.12 a purge
restricted to a subject moved the sequences of every consumer whose filter contained that
subject past the purged range (nats-server PR #3838), so the other runs' jobs queued behind it
were never delivered (their runs stayed ``running`` until their timeout). Deleting a message
leaves every consumer's position alone on all versions. The queue remembers the sequence of
every job it published until the job's reply arrives or the run's driver ends; a re-publish with
the same ``Nats-Msg-Id`` is acknowledged with the original message's sequence.

With ``FORGE_EXECUTOR=argo`` CI, artifact and release jobs go to Argo Workflows instead
(:mod:`.argo`); their replies come back on the same inboxes, so nothing else changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TypeVar

import msgspec
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from forge_common import jobs
from forge_common.results import encode_result, resolve_result
from forge_common.runtime import Runtime

from .argo import ARGO_JOB_TYPES, ArgoExecutor

__all__ = ["Job", "JobQueue", "QueuedJob"]

R = TypeVar("R")
_tracer = trace.get_tracer("forge.dispatcher")

Job = jobs.DiscoveryJob | jobs.CiJob | jobs.ArtifactJob


@dataclasses.dataclass
class QueuedJob:
    """A job published here whose reply has not arrived: where it is in the stream, and what
    the watchdog needs to publish it again."""

    job_type: jobs.JobType
    job: Job
    msg_id: str
    seq: int
    # Consecutive watchdog checks that found it neither in the stream's queue nor answered.
    suspect: int = 0
    republished: int = 0


class JobQueue:
    def __init__(self, runtime: Runtime, executor: ArgoExecutor | None = None) -> None:
        self.runtime = runtime
        self.names = runtime.names
        self.stream = self.names.stream(jobs.JOBS_STREAM)
        # run id -> job id -> the job, while it may still be queued
        self._queued: dict[str, dict[str, QueuedJob]] = {}
        self.executor = executor

    def on_argo(self, job_type: jobs.JobType) -> bool:
        return self.executor is not None and job_type in ARGO_JOB_TYPES

    def deadline_grace(self, job_type: jobs.JobType) -> float:
        """How much longer than a job's timeout the dispatcher waits for its reply: on Argo,
        the workflow's own deadline (activeDeadlineSeconds) decides first."""
        return self.executor.deadline_grace if self.executor is not None and self.on_argo(job_type) else 0.0

    async def dispatch(
        self,
        job_type: jobs.JobType,
        job: jobs.DiscoveryJob | jobs.CiJob | jobs.ArtifactJob | jobs.ReleaseJob,
        msg_id: str,
        timeout: float,
    ) -> str:
        """Publish the job (or submit its Argo workflow, with ``timeout`` as its deadline); the
        dispatch attempt its reply will carry (on Argo, a workflow a predecessor submitted keeps
        its own)."""
        if self.executor is not None and job_type in ARGO_JOB_TYPES and not isinstance(job, jobs.DiscoveryJob):
            return await self.executor.submit(job_type, job, timeout)
        if isinstance(job, jobs.ReleaseJob):
            raise TypeError("release jobs reach NATS through the outbox")
        await self.publish(job_type, job, msg_id)
        return job.attempt

    async def withdraw(self, job_type: jobs.JobType, run_id: str, job_id: str) -> None:
        """Nobody should run this job any more (its deadline passed): drop it from the queue,
        or stop its workflow."""
        await self.drop(run_id, [job_id])
        if self.executor is not None and self.on_argo(job_type):
            await self.executor.stop_job(job_type, job_id)

    async def publish(self, job_type: jobs.JobType, job: Job, msg_id: str) -> None:
        seq = await self._publish(job_type, job, msg_id)
        self._queued.setdefault(job.run_id, {})[job.job_id] = QueuedJob(job_type, job, msg_id, seq)

    async def republish(self, queued: QueuedJob) -> None:
        """Publish a job the stream lost (or will never deliver) again, under a new
        ``Nats-Msg-Id`` (the original's is in the duplicate window), and delete the old copy."""
        queued.republished += 1
        old = queued.seq
        queued.seq = await self._publish(queued.job_type, queued.job, f"{queued.msg_id}:re{queued.republished}")
        queued.suspect = 0
        with contextlib.suppress(Exception):
            await self.runtime.js.delete_msg(self.stream, old)

    async def _publish(self, job_type: jobs.JobType, job: Job, msg_id: str) -> int:
        run_id, job_id = job.run_id, job.job_id
        subject = jobs.job_subject(self.names, job_type, run_id, job_id)
        attributes = {"forge.run_id": run_id, "forge.job_id": job_id, "forge.job_type": job_type}
        with _tracer.start_as_current_span(f"{job_type} job publish", kind=SpanKind.PRODUCER, attributes=attributes):
            # The job's headers carry this span's context: the worker's spans are its children.
            headers = jobs.job_headers(self.names, job_type, run_id, job_id, msg_id)
            # A job over 1 MB (huge step commands) travels through S3 like a large result.
            body = await encode_result(self.runtime.s3, run_id, f"{job_type}-job", job_id, job)
            ack = await self.runtime.js.publish(subject, body, headers=headers, timeout=5.0)
        return ack.seq

    def answered(self, run_id: str, job_id: str) -> None:
        """The job's reply arrived: the worker acknowledges (removes) it, nothing to drop."""
        queued = self._queued.get(run_id)
        if queued is not None:
            queued.pop(job_id, None)

    def forget(self, run_id: str) -> None:
        """The run's driver ended here."""
        self._queued.pop(run_id, None)

    def queued(self, run_id: str) -> list[QueuedJob]:
        """The run's jobs published here and not answered yet."""
        return list(self._queued.get(run_id, {}).values())

    async def read_reply(self, raw: bytes, result_type: type[R]) -> jobs.JobReply[R]:
        """Raises ``msgspec.ValidationError`` for a reply that is not one."""
        return jobs.decode_reply(await resolve_result(self.runtime.s3, raw), result_type)

    async def drop(self, run_id: str, job_ids: list[str] | None = None) -> None:
        """Delete the run's queued jobs (``job_ids``, or all of them: the run ended) from the
        stream by sequence, so no worker starts them. A job already acknowledged is gone."""
        queued = self._queued.get(run_id, {})
        for job_id in list(queued) if job_ids is None else job_ids:
            job = queued.pop(job_id, None)
            if job is not None:
                with contextlib.suppress(Exception):
                    await self.runtime.js.delete_msg(self.stream, job.seq)
        if job_ids is None and self.executor is not None:
            await self.executor.stop_run(run_id)

    async def cancel_workers(self, run_id: str) -> None:
        """Tell the workers the run ended (they stop its steps) and drop its queued jobs."""
        with contextlib.suppress(Exception):
            await self.runtime.nc.publish(
                self.names.subject(f"pipeline.cancel.{run_id}"),
                msgspec.json.encode({"run_id": run_id, "reason": "run ended"}),
            )
        await self.drop(run_id)
