"""The dispatcher's side of the job queue: publish jobs, read replies, purge ended runs' jobs.

With ``FORGE_EXECUTOR=argo`` CI, artifact and release jobs go to Argo Workflows instead
(:mod:`.argo`); their replies come back on the same inboxes, so nothing else changes."""

from __future__ import annotations

import contextlib
from typing import TypeVar

import msgspec
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from forge_common import jobs
from forge_common.results import encode_result, resolve_result
from forge_common.runtime import Runtime

from .argo import ARGO_JOB_TYPES, ArgoExecutor

__all__ = ["JobQueue"]

R = TypeVar("R")
_tracer = trace.get_tracer("forge.dispatcher")


class JobQueue:
    def __init__(self, runtime: Runtime, executor: ArgoExecutor | None = None) -> None:
        self.runtime = runtime
        self.names = runtime.names
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
        await self.purge_subject(jobs.job_subject(self.names, job_type, run_id, job_id))
        if self.executor is not None and self.on_argo(job_type):
            await self.executor.stop_job(job_type, job_id)

    async def publish(
        self, job_type: jobs.JobType, job: jobs.DiscoveryJob | jobs.CiJob | jobs.ArtifactJob, msg_id: str
    ) -> None:
        run_id, job_id = job.run_id, job.job_id
        subject = jobs.job_subject(self.names, job_type, run_id, job_id)
        attributes = {"forge.run_id": run_id, "forge.job_id": job_id, "forge.job_type": job_type}
        with _tracer.start_as_current_span(f"{job_type} job publish", kind=SpanKind.PRODUCER, attributes=attributes):
            # The job's headers carry this span's context: the worker's spans are its children.
            headers = jobs.job_headers(self.names, job_type, run_id, job_id, msg_id)
            # A job over 1 MB (huge step commands) travels through S3 like a large result.
            body = await encode_result(self.runtime.s3, run_id, f"{job_type}-job", job_id, job)
            await self.runtime.js.publish(subject, body, headers=headers, timeout=5.0)

    async def read_reply(self, raw: bytes, result_type: type[R]) -> jobs.JobReply[R]:
        """Raises ``msgspec.ValidationError`` for a reply that is not one."""
        return jobs.decode_reply(await resolve_result(self.runtime.s3, raw), result_type)

    async def purge_run(self, run_id: str) -> None:
        """Drop the run's queued discovery, CI and artifact jobs (the run ended; nobody should
        start them), and stop its Argo workflows."""
        await self.purge_subject(jobs.job_subject(self.names, "discovery", run_id))
        await self.purge_subject(self.names.subject(f"pipeline.tasks.{run_id}.>"))
        await self.purge_subject(self.names.subject(f"pipeline.artifacts.{run_id}.>"))
        if self.executor is not None:
            await self.executor.stop_run(run_id)

    async def purge_subject(self, subject: str) -> None:
        with contextlib.suppress(Exception):
            await self.runtime.js.purge_stream(self.names.stream(jobs.JOBS_STREAM), subject=subject)

    async def cancel_workers(self, run_id: str) -> None:
        """Tell the workers the run ended (they stop its steps) and drop its queued jobs."""
        with contextlib.suppress(Exception):
            await self.runtime.nc.publish(
                self.names.subject(f"pipeline.cancel.{run_id}"),
                msgspec.json.encode({"run_id": run_id, "reason": "run ended"}),
            )
        await self.purge_run(run_id)
