"""``forge-worker run-job``: run one job and write its reply; the pod command of the Argo
executor (``FORGE_EXECUTOR=argo``, docs/argo.md).

The job is the same :mod:`forge_common.jobs` Struct a worker pulls from JetStream, given in
``FORGE_JOB`` (base64 of its JSON, or of a result reference to it in S3), its type in
``FORGE_JOB_TYPE`` and Argo's retry count in ``FORGE_JOB_DELIVERY`` (a retried pod resumes a CI
job as a redelivered one does). It runs with the same runners, sandbox and reports as in the
worker process; the reply (job id and dispatch attempt filled in, secrets redacted) is written
to ``FORGE_JOB_REPLY_FILE``, through S3 when it is over ``ARGO_INLINE_LIMIT``. SIGTERM (Argo
stopping the workflow: the run was cancelled) stops the job's steps and answers ``cancelled``.

Exit status: 0 when the job ran (whatever its outcome: the reply says it); 1 when it could not
(an infrastructure failure: Argo's retry strategy runs it again, the reply of the last attempt
names the failure); 2 for a job that cannot be read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from forge_common import jobs
from forge_common.jobs import JobRef, JobReply, JobSettings, JobType
from forge_common.results import encode_result, resolve_result
from forge_common.tracing import extract

from .handling import AnyReply
from .reporter import InfraError
from .settings import Settings
from .worker import Worker

__all__ = ["JobInputError", "main_run_job", "read_job", "run_job"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.worker")


class JobInputError(Exception):
    """The pod's environment does not hold a job this command can read."""


def read_job(environ: Mapping[str, str]) -> tuple[JobType, bytes, int, Path]:
    """(job type, the job's JSON or result reference, delivery number, reply file)."""
    job_type = environ.get(jobs.ARGO_JOB_TYPE_ENV, "")
    if job_type not in ("ci", "artifact", "release", "discovery"):
        raise JobInputError(f"{jobs.ARGO_JOB_TYPE_ENV} must be ci, artifact, release or discovery")
    try:
        raw = base64.b64decode(environ.get(jobs.ARGO_JOB_ENV, ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobInputError(f"{jobs.ARGO_JOB_ENV} is not base64: {exc}") from exc
    if not raw:
        raise JobInputError(f"{jobs.ARGO_JOB_ENV} is empty")
    try:
        # Argo's {{retries}}: 0 on the first attempt.
        delivery = int(environ.get(jobs.ARGO_DELIVERY_ENV) or "0") + 1
    except ValueError as exc:
        raise JobInputError(f"{jobs.ARGO_DELIVERY_ENV} must be a number") from exc
    reply = Path(environ.get(jobs.ARGO_REPLY_FILE_ENV) or jobs.ARGO_REPLY_FILE)
    return job_type, raw, max(1, delivery), reply  # type: ignore[return-value] # checked above


async def run_job(settings: Settings, job_settings: JobSettings, environ: Mapping[str, str]) -> int:
    """Run the job of ``environ``; the exit status (module docstring). Its span continues the
    dispatcher's trace (``FORGE_JOB_TRACE``), as a worker's continues the job's NATS headers."""
    job_type = environ.get(jobs.ARGO_JOB_TYPE_ENV, "")
    with _tracer.start_as_current_span(
        f"{job_type} job",
        context=extract(_trace_context(environ)),
        kind=SpanKind.CONSUMER,
        attributes={"forge.job_type": job_type, "forge.executor": "argo"},
    ):
        return await _run_job(settings, job_settings, environ)


def _trace_context(environ: Mapping[str, str]) -> dict[str, str]:
    try:
        value = msgspec.json.decode(environ.get(jobs.ARGO_TRACE_ENV) or "{}", type=dict[str, str])
    except msgspec.DecodeError:
        return {}
    return value


async def _run_job(settings: Settings, job_settings: JobSettings, environ: Mapping[str, str]) -> int:
    job_type, raw, delivery, reply_file = read_job(environ)
    worker = Worker(settings, job_settings)
    ref = JobRef()
    code = 0
    try:
        payload: Any = await resolve_result(worker.s3, raw)
        ref = msgspec.convert(payload, JobRef)
        trace.get_current_span().set_attribute("forge.run_id", ref.run_id)
        runners = await worker.prepare()
        _stop_on_sigterm(worker, ref.run_id)
        reply: AnyReply = await runners.run(job_type, payload, ref, delivery)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise JobInputError(f"{jobs.ARGO_JOB_ENV} holds no {job_type} job: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - infrastructure failure: the reply says it, Argo retries
        reason = str(exc) if isinstance(exc, InfraError) else f"{type(exc).__name__}: {exc}"
        log.warning("worker.job_failed", job_type=job_type, run_id=ref.run_id, delivery=delivery, error=reason)
        reply = JobReply[None](status="failed", error=f"job failed on delivery {delivery}: {reason}")
        code = 1
    try:
        if reply.error:
            reply.error = worker.redact(reply.error)
        reply.job_id, reply.attempt = ref.job_id or None, ref.attempt or None
        body = await encode_result(
            worker.s3, ref.run_id, job_type, ref.job_id or ref.run_id, reply, limit=jobs.ARGO_INLINE_LIMIT
        )
        reply_file.parent.mkdir(parents=True, exist_ok=True)
        reply_file.write_bytes(body)
    finally:
        await worker.close()
    log.info("worker.job_done", job_type=job_type, run_id=ref.run_id, job_id=ref.job_id, status=reply.status)
    return code


def _stop_on_sigterm(worker: Worker, run_id: str) -> None:
    """Argo stops a workflow by terminating its pod: the run was cancelled (or timed out)."""

    def stop() -> None:
        worker.cancelled.add(run_id)
        killed = worker.table.cancel_run(run_id)
        log.info("worker.cancel", run_id=run_id, steps=killed, reason="SIGTERM")

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)


def main_run_job(settings: Settings, job_settings: JobSettings) -> int:
    try:
        return asyncio.run(run_job(settings, job_settings, os.environ))
    except JobInputError as exc:
        log.error("worker.bad_job", error=str(exc))
        return 2
