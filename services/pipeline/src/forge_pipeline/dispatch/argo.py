"""The Argo Workflows executor (``FORGE_EXECUTOR=argo``, docs/argo.md).

Instead of publishing a CI, artifact or release job on NATS for the workers, the dispatcher
submits one Argo Workflow per job through the Argo server's REST API (hera's
:class:`AsyncWorkflowsService`). The workflow is one pod running ``forge-worker run-job``
(forge_worker.single) with the job in its environment; the job's timeout is the workflow's
``activeDeadlineSeconds``. A monitor follows the workflow until it ends, takes the reply from its
output parameter (or, when the pod wrote none, makes a ``failed`` reply from the workflow's
phase and message) and publishes it on the job's reply inbox: the driver handles it exactly as
a worker's reply (attempt check, S3 result references, the same run/phase/task state, events
and logs: the pod reports steps and uploads logs as a worker does).

Monitors are woken by the Argo server's event stream (``GET /api/v1/workflow-events/{ns}``,
Forge's workflows only), so a finished workflow is seen at once; each also looks every
``FORGE_ARGO_POLL_INTERVAL`` on its own, which covers a broken stream.

Workflow names derive from the job id (``forge-{type}-{job id}``), so a replica taking a run
over re-submits nothing: the existing workflow (409) is adopted with the dispatch attempt it
carries. Cancelling a run stops its workflows (``PUT .../stop``), found by the run label.
Discovery stays on the NATS workers (docs/argo.md says why).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import shlex
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import msgspec
import structlog
from hera.exceptions import AlreadyExists, HeraException
from hera.exceptions import NotFound as ArgoNotFound
from hera.workflows import ConfigMapEnvFrom, Container, Env, Parameter, RetryStrategy, SecretEnvFrom, Workflow
from hera.workflows import models as m
from hera.workflows.async_service import AsyncWorkflowsService
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
from pydantic import PydanticDeprecatedSince20

from forge_common import jobs
from forge_common.jobs import JobReply, JobSettings, JobType
from forge_common.results import encode_result
from forge_common.runtime import Runtime
from forge_common.tracing import inject

__all__ = ["ARGO_JOB_TYPES", "ArgoExecutor", "ArgoSettings", "build_workflow", "workflow_name"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.dispatcher")

# hera's service serializes requests with pydantic's v1-style ``.json()``: a deprecation warning
# per request that says nothing about this code.
warnings.filterwarnings("ignore", category=PydanticDeprecatedSince20, module=r"hera\.")

ARGO_JOB_TYPES: frozenset[JobType] = frozenset({"ci", "artifact", "release"})
FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Error"})
# Answers of the Argo server that another try would get again.
REFUSALS = frozenset({400, 401, 403, 404, 422})
LABEL_RUN = "forge.dev/run-id"
LABEL_JOB = "forge.dev/job-id"
LABEL_TYPE = "forge.dev/job-type"
LABEL_PART_OF = "app.kubernetes.io/part-of"
ANNOTATION_ATTEMPT = "forge.dev/attempt"
ANNOTATION_TIMEOUT = "forge.dev/timeout-seconds"

WORKFLOWS = Counter(
    "forge_pipeline_argo_workflows_total",
    "Argo workflows of jobs, by job type and what happened (submitted, adopted, refused, succeeded, failed, stopped)",
    ["job_type", "outcome"],
)


class ArgoSettings(msgspec.Struct, kw_only=True):
    """``FORGE_EXECUTOR`` and ``FORGE_ARGO_*`` (docs/argo.md, "Settings")."""

    executor: str = "nats"
    argo_server_url: str = ""
    argo_namespace: str = "default"
    # Bearer token for the Argo server; or a file re-read for every request (a projected
    # service-account token rotates).
    argo_token: str = ""
    argo_token_file: str = ""
    argo_verify_tls: bool = True
    # The job pods: the worker image and its single-job command, their service account, and the
    # Secret / ConfigMap holding the worker's FORGE_* settings (envFrom).
    argo_image: str = ""
    argo_command: str = "forge-worker run-job"
    argo_image_pull_policy: str = "IfNotPresent"
    argo_service_account: str = ""
    argo_env_secret: str = ""
    argo_env_config_map: str = ""
    # How often a running workflow is looked at besides the event stream's wake-ups.
    argo_poll_interval: float = 10.0
    # The dispatcher's own deadline for a job is its activeDeadlineSeconds plus this (pod
    # scheduling, image pulls and the last poll): Argo's deadline decides, this is the backstop.
    argo_deadline_grace: float = 30.0
    # Finished workflows are deleted by Argo after this long (ttlStrategy).
    argo_ttl_after_finished: float = 86400.0

    @property
    def enabled(self) -> bool:
        return self.executor == "argo"

    def command(self) -> list[str]:
        return shlex.split(self.argo_command)

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.executor not in ("nats", "argo"):
            problems.append('FORGE_EXECUTOR must be "nats" (the workers) or "argo" (Argo Workflows)')
        if not self.enabled:
            return problems
        if not self.argo_server_url.startswith(("http://", "https://")):
            problems.append("FORGE_ARGO_SERVER_URL must be the Argo server's http(s) URL with FORGE_EXECUTOR=argo")
        if not self.argo_image:
            problems.append("FORGE_ARGO_IMAGE (the worker image the job pods run) is required with FORGE_EXECUTOR=argo")
        if not self.command():
            problems.append("FORGE_ARGO_COMMAND must not be empty")
        if not self.argo_namespace:
            problems.append("FORGE_ARGO_NAMESPACE must name the namespace workflows are submitted to")
        if self.argo_poll_interval <= 0 or self.argo_deadline_grace < 0:
            problems.append("FORGE_ARGO_POLL_INTERVAL must be positive and FORGE_ARGO_DEADLINE_GRACE >= 0")
        return problems


def workflow_name(job_type: JobType, job_id: str) -> str:
    return f"forge-{job_type}-{job_id}".lower()


def build_workflow(
    settings: ArgoSettings,
    job_type: JobType,
    job: jobs.CiJob | jobs.ArtifactJob | jobs.ReleaseJob,
    encoded_job: bytes,
    timeout: float,
    max_deliver: int,
) -> m.Workflow:
    """The workflow of one job, built and validated by hera's models (pydantic): one container
    template, the job in its environment, the reply as a global output parameter."""
    env_from: list[SecretEnvFrom | ConfigMapEnvFrom] = []
    if settings.argo_env_config_map:
        env_from.append(ConfigMapEnvFrom(name=settings.argo_env_config_map))
    if settings.argo_env_secret:
        env_from.append(SecretEnvFrom(name=settings.argo_env_secret))
    deadline = max(1, math.ceil(timeout))
    retries = max(0, max_deliver - 1)
    env = [
        Env(name=jobs.ARGO_JOB_TYPE_ENV, value=job_type),
        Env(name=jobs.ARGO_JOB_ENV, value=base64.b64encode(encoded_job).decode()),
        Env(name=jobs.ARGO_REPLY_FILE_ENV, value=jobs.ARGO_REPLY_FILE),
    ]
    trace_context = inject({})
    if trace_context:
        env.append(Env(name=jobs.ARGO_TRACE_ENV, value=json.dumps(trace_context)))
    if retries:
        # Argo's retry count (0 on the first attempt; defined only with a retry strategy): a
        # retried pod resumes like a redelivered job.
        env.append(Env(name=jobs.ARGO_DELIVERY_ENV, value="{{retries}}"))
    with Workflow(
        name=workflow_name(job_type, job.job_id),
        namespace=settings.argo_namespace,
        entrypoint="job",
        labels={
            LABEL_RUN: job.run_id,
            LABEL_JOB: job.job_id,
            LABEL_TYPE: job_type,
            LABEL_PART_OF: "forge",
        },
        annotations={ANNOTATION_ATTEMPT: job.attempt, ANNOTATION_TIMEOUT: str(deadline)},
        active_deadline_seconds=deadline,
        service_account_name=settings.argo_service_account or None,
        # The job pods are the platform's workers to its network policies (the chart's allowFrom).
        pod_metadata=m.Metadata(labels={LABEL_PART_OF: "forge", "app.kubernetes.io/component": "worker"}),
        pod_gc=m.PodGC(strategy="OnPodCompletion"),
        ttl_strategy=m.TTLStrategy(seconds_after_completion=int(settings.argo_ttl_after_finished)),
    ) as workflow:
        Container(
            name="job",
            image=settings.argo_image,
            image_pull_policy=settings.argo_image_pull_policy,
            command=settings.command(),
            env=env,
            env_from=env_from or None,
            # An infrastructure failure (the pod exits 1, or is lost) is retried like a NATS
            # redelivery, up to FORGE_JOB_MAX_DELIVER attempts in all.
            retry_strategy=RetryStrategy(limit=retries, retry_policy="Always") if retries else None,
            outputs=[
                Parameter(
                    name=jobs.ARGO_REPLY_PARAMETER,
                    value_from=m.ValueFrom(path=jobs.ARGO_REPLY_FILE),
                    global_name=jobs.ARGO_REPLY_PARAMETER,
                )
            ],
        )
    built = workflow.build()
    assert isinstance(built, m.Workflow)
    return built


class ArgoExecutor:
    def __init__(self, runtime: Runtime, settings: ArgoSettings, job_settings: JobSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.job_settings = job_settings
        self.service = AsyncWorkflowsService(
            host=settings.argo_server_url.rstrip("/") + "/",
            verify_ssl=settings.argo_verify_tls,
            token=settings.argo_token or None,
            namespace=settings.argo_namespace,
        )
        # workflow name -> its monitor, and the event the watch stream sets when it changed
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._watcher: asyncio.Task[None] | None = None

    @property
    def deadline_grace(self) -> float:
        return self.settings.argo_deadline_grace

    def _authorize(self) -> None:
        if self.settings.argo_token_file:
            token = Path(self.settings.argo_token_file).read_text().strip()
            self.service.token = f"Bearer {token}"

    async def submit(
        self, job_type: JobType, job: jobs.CiJob | jobs.ArtifactJob | jobs.ReleaseJob, timeout: float
    ) -> str:
        """Submit the job's workflow (or adopt the one a predecessor submitted) and monitor it;
        the dispatch attempt its reply will carry."""
        name = workflow_name(job_type, job.job_id)
        attributes = {"forge.run_id": job.run_id, "forge.job_id": job.job_id, "forge.job_type": job_type}
        # The pod's spans are children of this one (its context travels in the manifest).
        with _tracer.start_as_current_span(f"{job_type} job submit", kind=SpanKind.PRODUCER, attributes=attributes):
            return await self._submit(job_type, job, timeout, name)

    async def _submit(
        self, job_type: JobType, job: jobs.CiJob | jobs.ArtifactJob | jobs.ReleaseJob, timeout: float, name: str
    ) -> str:
        # A large job is stored under its attempt: a re-submission meeting the existing workflow
        # never replaces the job that workflow's pod is about to read.
        encoded = await encode_result(
            self.runtime.s3,
            job.run_id,
            f"{job_type}-job",
            f"{job.job_id}-{job.attempt}",
            job,
            limit=jobs.ARGO_INLINE_LIMIT,
        )
        manifest = build_workflow(self.settings, job_type, job, encoded, timeout, self.job_settings.job_max_deliver)
        attempt = job.attempt
        self._authorize()
        try:
            await self.service.create_workflow(m.WorkflowCreateRequest(workflow=manifest))
            WORKFLOWS.labels(job_type, "submitted").inc()
            log.info("argo.submitted", workflow=name, run_id=job.run_id, job_type=job_type, deadline=timeout)
        except AlreadyExists:
            existing = await self.service.get_workflow(name)
            attempt = (existing.metadata.annotations or {}).get(ANNOTATION_ATTEMPT, attempt)
            WORKFLOWS.labels(job_type, "adopted").inc()
            log.info("argo.adopted", workflow=name, run_id=job.run_id, job_type=job_type)
        except HeraException as exc:
            if getattr(exc, "status_code", 0) not in REFUSALS:
                raise  # the server is down or failing: the driver tries again (dispatcher.py)
            # Refused for good (RBAC, a missing namespace, a manifest the server rejects): the
            # job fails with the server's reason instead of being submitted forever.
            WORKFLOWS.labels(job_type, "refused").inc()
            log.error("argo.refused", workflow=name, run_id=job.run_id, error=str(exc))
            reply = _failure(job.job_id, attempt, f"the Argo server refused workflow {name}: {exc}")
            await jobs.publish_reply(
                self.runtime.nc, jobs.inbox_subject(self.runtime.names, job.run_id, job.job_id), reply
            )
            return attempt
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="argo-watch")
        if name not in self._monitors or self._monitors[name].done():
            self._wake[name] = asyncio.Event()
            task = asyncio.create_task(self._monitor(name, job_type, job.run_id, job.job_id, attempt))
            self._monitors[name] = task
            task.add_done_callback(lambda done: self._forget(name, done))
        return attempt

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self._monitors.get(name) is task:
            del self._monitors[name]
            self._wake.pop(name, None)

    async def _watch(self) -> None:
        """Wake the monitor of every Forge workflow the server reports a change of. The monitor
        reads the workflow itself: the stream only says when to look."""
        url = urljoin(self.service.host, f"api/v1/workflow-events/{self.settings.argo_namespace}")
        params = {"listOptions.labelSelector": f"{LABEL_PART_OF}=forge"}
        while True:
            try:
                self._authorize()
                async with self.service.session.stream(
                    "GET",
                    url,
                    params=params,
                    headers={"Authorization": self.service.token or ""},
                    timeout=httpx.Timeout(10.0, read=None),
                ) as response:
                    if response.status_code != 200:
                        raise HeraException(f"the workflow event stream answered {response.status_code}")
                    async for line in response.aiter_lines():
                        name = _event_workflow(line)
                        if name and (wake := self._wake.get(name)) is not None:
                            wake.set()
            except asyncio.CancelledError:
                raise
            except (HeraException, httpx.HTTPError, OSError) as exc:
                log.warning("argo.watch_failed", error=str(exc) or type(exc).__name__)
            # The stream ended (the server closes it now and then): open it again.
            await asyncio.sleep(min(self.settings.argo_poll_interval, 5.0))

    async def _monitor(self, name: str, job_type: JobType, run_id: str, job_id: str, attempt: str) -> None:
        """Until the workflow ends; then its reply goes to the job's inbox."""
        wake = self._wake.setdefault(name, asyncio.Event())
        while True:
            # Cleared before looking: a change reported while the request is out wakes the next wait.
            wake.clear()
            try:
                self._authorize()
                workflow = await self.service.get_workflow(name)
            except ArgoNotFound:
                reply = _failure(job_id, attempt, f"the Argo workflow {name} was deleted before it ended")
                break
            except (HeraException, httpx.HTTPError, OSError, ValueError) as exc:  # Argo server restarting
                log.warning("argo.poll_failed", workflow=name, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(min(self.settings.argo_poll_interval, 5.0))
                continue
            status = workflow.status
            if status is not None and status.phase in FINISHED_PHASES:
                reply = _reply_of(workflow, name, job_id, attempt)
                WORKFLOWS.labels(job_type, "succeeded" if status.phase == "Succeeded" else "failed").inc()
                log.info("argo.finished", workflow=name, run_id=run_id, phase=status.phase, message=status.message)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.argo_poll_interval)
        with contextlib.suppress(Exception):  # nobody listens any more: the driver ended
            await jobs.publish_reply(self.runtime.nc, jobs.inbox_subject(self.runtime.names, run_id, job_id), reply)

    async def stop_job(self, job_type: JobType, job_id: str) -> None:
        """Stop one job's workflow (its deadline passed in the dispatcher's eyes)."""
        await self._stop(workflow_name(job_type, job_id), job_type)

    async def stop_run(self, run_id: str) -> None:
        """Stop every unfinished workflow of the run (it was cancelled or failed)."""
        try:
            self._authorize()
            listed = await self.service.list_workflows(label_selector=f"{LABEL_RUN}={run_id}")
        except (HeraException, httpx.HTTPError, OSError, ValueError) as exc:
            log.warning("argo.list_failed", run_id=run_id, error=str(exc) or type(exc).__name__)
            return
        for workflow in listed.items or []:
            phase = workflow.status.phase if workflow.status else None
            name = workflow.metadata.name
            if name and phase not in FINISHED_PHASES:
                await self._stop(name, (workflow.metadata.labels or {}).get(LABEL_TYPE, "ci"))

    async def _stop(self, name: str, job_type: str) -> None:
        try:
            self._authorize()
            await self.service.stop_workflow(name, m.WorkflowStopRequest(name=name, message="the Forge run ended"))
            WORKFLOWS.labels(job_type, "stopped").inc()
            log.info("argo.stopped", workflow=name)
        except ArgoNotFound:
            return
        except (HeraException, httpx.HTTPError, OSError, ValueError) as exc:
            log.warning("argo.stop_failed", workflow=name, error=str(exc) or type(exc).__name__)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        for task in list(self._monitors.values()):
            task.cancel()
        for task in list(self._monitors.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._monitors.clear()
        with contextlib.suppress(Exception):
            await self.service.close()  # type: ignore[no-untyped-call] # hera leaves it untyped


class _EventMetadata(msgspec.Struct):
    name: str = ""


class _EventObject(msgspec.Struct):
    metadata: _EventMetadata = msgspec.field(default_factory=_EventMetadata)


class _Event(msgspec.Struct):
    object: _EventObject = msgspec.field(default_factory=_EventObject)


class _EventLine(msgspec.Struct):
    """One line of the event stream: ``{"result": {"type": ..., "object": <workflow>}}``."""

    result: _Event | None = None


def _event_workflow(line: str) -> str:
    """The name of the workflow an event line is about ("" for anything else)."""
    try:
        event = msgspec.json.decode(line, type=_EventLine)
    except msgspec.DecodeError:  # also ValidationError: not an event
        return ""
    return event.result.object.metadata.name if event.result is not None else ""


def _failure(job_id: str, attempt: str, error: str) -> bytes:
    return msgspec.json.encode(JobReply[None](status="failed", error=error, job_id=job_id, attempt=attempt))


def _reply_parameter(workflow: m.Workflow) -> str | None:
    """The reply: the workflow's global output parameter, else the newest pod node's output."""
    status = workflow.status
    if status is None:
        return None
    for parameter in (status.outputs.parameters if status.outputs else None) or []:
        if parameter.name == jobs.ARGO_REPLY_PARAMETER and parameter.value:
            return str(parameter.value)
    nodes: list[Any] = sorted(
        (n for n in (status.nodes or {}).values() if n.type == "Pod" and n.outputs and n.outputs.parameters),
        key=lambda n: str(n.finished_at or ""),
    )
    for node in reversed(nodes):
        for parameter in node.outputs.parameters:
            if parameter.name == jobs.ARGO_REPLY_PARAMETER and parameter.value:
                return str(parameter.value)
    return None


def _reply_of(workflow: m.Workflow, name: str, job_id: str, attempt: str) -> bytes:
    """The pod's reply; a timeout when Argo ended the workflow at its deadline (whatever the
    terminated pod still wrote: it was told to stop); else a failure naming the phase."""
    status = workflow.status
    assert status is not None
    message = status.message or ""
    annotations = workflow.metadata.annotations or {}
    if status.phase != "Succeeded" and "deadline" in message.lower():
        seconds = annotations.get(ANNOTATION_TIMEOUT, "?")
        return _failure(job_id, attempt, f"timed out after {seconds}s (the job's activeDeadlineSeconds)")
    value = _reply_parameter(workflow)
    if value is not None:
        return value.encode()
    why = f": {message}" if message else ""
    return _failure(job_id, attempt, f"the Argo workflow {name} ended {status.phase} without a reply{why}")
