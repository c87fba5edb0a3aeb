"""Handling one delivery of a job: decode it, run it, reply, then ack.

A job's answer goes to the inbox in its ``Forge-Reply-To`` header (large answers through S3),
and the message is acked only after the reply is published. While the job runs, in-progress
heartbeats keep JetStream from redelivering it. A job that fails for an infrastructure reason
is retried (nak with back-off) until its last delivery, which dead-letters it with the reason
and answers ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from forge_common import jobs
from forge_common.jobs import (
    ArtifactJob,
    ArtifactResult,
    CiJob,
    CiResult,
    DeadLettered,
    DiscoveryJob,
    DiscoveryResult,
    JobRef,
    JobReply,
    JobSettings,
    JobType,
    PublishJob,
    PublishResult,
    ReleaseJob,
    ReleaseResult,
)
from forge_common.nats import Names
from forge_common.redact import Redactor
from forge_common.results import encode_result, resolve_result
from forge_common.s3 import S3
from forge_common.tracing import extract

from . import health
from .artifacts import ArtifactJobRunner
from .ci import CiJobRunner
from .discovery import run_discovery
from .git import GitCache
from .release import ReleaseJobRunner
from .reporter import InfraError
from .republish import PublishJobRunner

__all__ = ["AnyReply", "CancelledRuns", "JobHandler", "Runners"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.worker")

AnyReply = (
    JobReply[CiResult]
    | JobReply[DiscoveryResult]
    | JobReply[ReleaseResult]
    | JobReply[ArtifactResult]
    | JobReply[PublishResult]
    | JobReply[None]
)


class CancelledRuns:
    """Runs cancelled recently: jobs for them that arrive later are dropped, not run."""

    def __init__(self, limit: int = 10_000) -> None:
        self._runs: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def add(self, run_id: str) -> None:
        self._runs[run_id] = time.monotonic()
        while len(self._runs) > self._limit:
            self._runs.popitem(last=False)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs


class Runners:
    """What runs a job's payload, whoever delivered it: a JetStream delivery (:class:`JobHandler`)
    or the single-job command of the Argo executor (``forge_worker.single``)."""

    def __init__(
        self,
        git: GitCache,
        ci: CiJobRunner,
        releases: ReleaseJobRunner,
        artifacts: ArtifactJobRunner | None,
        cancelled: CancelledRuns,
        publisher: PublishJobRunner | None = None,
    ) -> None:
        self.git = git
        self.ci = ci
        self.releases = releases
        self.artifacts = artifacts
        self.cancelled = cancelled
        self.publisher = publisher

    async def run(
        self,
        job_type: JobType,
        payload: Any,
        ref: JobRef,
        deliveries: int,
        later: contextlib.AsyncExitStack | None = None,
    ) -> AnyReply:
        """The job's reply; clean-up that can wait until it is sent goes on ``later``."""
        if ref.run_id in self.cancelled:
            return JobReply[None](status="cancelled", error="the run was cancelled")
        if job_type == "ci":
            return await self.ci.run(msgspec.convert(payload, CiJob), deliveries, later)
        if job_type == "discovery":
            return await run_discovery(self.git, msgspec.convert(payload, DiscoveryJob))
        if job_type == "release":
            return await self.releases.run(msgspec.convert(payload, ReleaseJob))
        if job_type == "artifact" and self.artifacts is not None:
            return await self.artifacts.run(msgspec.convert(payload, ArtifactJob))
        if job_type == "publish" and self.publisher is not None:
            return await self.publisher.run(msgspec.convert(payload, PublishJob))
        return JobReply[None](status="failed", error=f"this worker cannot run {job_type} jobs")


class JobHandler:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        names: Names,
        s3: S3,
        job_settings: JobSettings,
        cancelled: CancelledRuns,
        git: GitCache,
        ci: CiJobRunner,
        releases: ReleaseJobRunner,
        artifacts: ArtifactJobRunner | None = None,
        redact: Redactor | None = None,
        publisher: PublishJobRunner | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.s3 = s3
        self.job_settings = job_settings
        self.cancelled = cancelled
        self.git = git
        self.ci = ci
        self.releases = releases
        self.artifacts = artifacts
        self.publisher = publisher
        # Replies and dead-letter reasons become run errors: no secret of this process in them.
        self.redact = redact or Redactor()
        # Stream sequence -> newest delivery of each job this process is running.
        self._deliveries: dict[int, Msg] = {}

    async def handle(self, job_type: JobType, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq in self._deliveries:
            # Redelivered to us while we still run it (a heartbeat came late): keep running the
            # first copy, and from now on heartbeat and ack through the newest delivery.
            self._deliveries[seq] = msg
            with contextlib.suppress(Exception):
                await msg.in_progress()
            return
        self._deliveries[seq] = msg
        headers = jobs.decode_headers(msg.headers)
        # The job's span continues the dispatcher's trace (traceparent in the job's headers);
        # status reports, the release request and the reply carry it on.
        with _tracer.start_as_current_span(
            f"{job_type} job",
            context=extract(headers),
            kind=SpanKind.CONSUMER,
            attributes={"forge.job_type": job_type, "forge.delivery": msg.metadata.num_delivered or 1},
        ) as span:
            await self._handle(job_type, msg, seq, headers, span)

    async def _handle(self, job_type: JobType, msg: Msg, seq: int, headers: dict[str, str], span: trace.Span) -> None:
        deliveries = msg.metadata.num_delivered or 1
        started = time.perf_counter()
        beat = asyncio.create_task(self._heartbeat(seq, job_type))
        ref = JobRef()
        try:
            # The task's workspace and sandbox are torn down after the reply and the ack (the
            # outcome was reported already): the dispatcher moves on meanwhile.
            async with contextlib.AsyncExitStack() as later:
                payload = await resolve_result(self.s3, msg.data)
                ref = msgspec.convert(payload, JobRef)
                span.set_attribute("forge.run_id", ref.run_id)
                reply = await self._run(job_type, payload, ref, deliveries, later)
                if reply.error:
                    reply.error = self.redact(reply.error)
                # The dispatcher accepts only a reply naming the job and its dispatch attempt.
                reply.job_id, reply.attempt = ref.job_id or None, ref.attempt or None
                if reply.status != "success":
                    span.set_status(Status(StatusCode.ERROR, reply.error or reply.status))
                reply_to = headers.get(jobs.HDR_REPLY_TO, "")
                if reply_to:
                    body = await encode_result(self.s3, ref.run_id, job_type, ref.job_id or ref.run_id, reply)
                    await jobs.publish_reply(self.nc, reply_to, body)
                await self._deliveries[seq].ack()
            self._done(job_type, ref, reply, deliveries, started)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:  # noqa: BLE001 - infrastructure failure: retry, then dead-letter
            await self._failed_delivery(job_type, self._deliveries.get(seq, msg), headers, ref, deliveries, exc)
        finally:
            beat.cancel()
            self._deliveries.pop(seq, None)

    async def _run(
        self, job_type: JobType, payload: Any, ref: JobRef, deliveries: int, later: contextlib.AsyncExitStack
    ) -> AnyReply:
        runners = Runners(self.git, self.ci, self.releases, self.artifacts, self.cancelled, self.publisher)
        return await runners.run(job_type, payload, ref, deliveries, later)

    def _done(self, job_type: JobType, ref: JobRef, reply: AnyReply, deliveries: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        health.JOBS.labels(job_type, reply.status).inc()
        health.JOB_DURATION.labels(job_type).observe(elapsed)
        log.info(
            "worker.job_done",
            job_type=job_type,
            run_id=ref.run_id,
            job_id=ref.job_id,
            status=reply.status,
            deliveries=deliveries,
            duration_ms=round(elapsed * 1000, 1),
        )

    async def _heartbeat(self, seq: int, job_type: JobType) -> None:
        interval = max(0.25, min(self.job_settings.ack_wait(job_type) / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await self._deliveries[seq].in_progress()

    async def _failed_delivery(
        self, job_type: JobType, msg: Msg, headers: dict[str, str], ref: JobRef, deliveries: int, exc: Exception
    ) -> None:
        reason = self.redact(f"{type(exc).__name__}: {exc}" if not isinstance(exc, InfraError) else str(exc))
        limit = self.job_settings.job_max_deliver
        log.warning("worker.job_failed", job_type=job_type, run_id=ref.run_id, deliveries=deliveries, error=reason)
        if deliveries < limit:
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(0.5 * 2**deliveries, 10.0))
            return
        why = f"job failed on all {deliveries} deliveries; last error: {reason}"
        try:
            await jobs.dead_letter(
                self.js,
                self.names,
                job_type=job_type,
                run_id=ref.run_id,
                original_subject=msg.subject,
                payload=msg.data,
                headers=headers,
                reason=why,
                deliveries=deliveries,
            )
            reply_to = headers.get(jobs.HDR_REPLY_TO)
            if reply_to:
                reply = JobReply(
                    status="failed",
                    error=why,
                    result=DeadLettered(),
                    job_id=ref.job_id or None,
                    attempt=ref.attempt or None,
                )
                await jobs.publish_reply(self.nc, reply_to, msgspec.json.encode(reply))
            await msg.term()
        except Exception as dl_exc:  # noqa: BLE001 - the advisory path in the dispatcher still covers it
            log.error("worker.dead_letter_failed", run_id=ref.run_id, error=str(dl_exc))
