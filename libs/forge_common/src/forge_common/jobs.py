"""Jobs over JetStream: streams, consumers, request-reply headers and dead letters.

The dispatcher (pipeline service) and the workers agree on everything here:

* one work-queue stream ``PIPELINE_JOBS`` (file storage, max age 1h) holding the job subjects
  ``pipeline.discovery.{run}``, ``pipeline.tasks.{run}.{task}``, ``pipeline.artifacts.{run}.{id}``,
  ``pipeline.releases.{run}`` and ``pipeline.publish.{run}.{id}``;
* one durable pull consumer per worker type (``discovery``, ``ci``, ``artifact``, ``release``,
  ``publish``),
  explicit ack, ack wait ``FORGE_JOB_ACK_WAIT`` (30 s; workers heartbeat a running job with
  in-progress acks, so a live job is never redelivered and a killed worker's job comes back
  within the ack wait), max deliver 3;
* a dead-letter stream ``PIPELINE_DEAD_LETTERS`` (``pipeline.deadletter.{type}.{run}``) for jobs
  that exhausted their deliveries, with the reason in the ``Forge-Dead-Reason`` header.

Request-reply follows the spec: the dispatcher subscribes a unique inbox per job and publishes the
job with that inbox as its reply subject. JetStream uses a message's own reply subject for acks,
so the inbox travels in the ``Forge-Reply-To`` header; the worker publishes the reply there and
acks the job only afterwards.

Jobs, replies and dead letters carry the W3C trace context (``traceparent``) of their sender in
their headers (:func:`job_headers`, :func:`publish_reply`), so the worker's spans continue the
dispatcher's trace and the dispatcher's continue the worker's.

The job and reply payloads below are the contract between the two processes, defined once:
the dispatcher builds jobs from these Structs and decodes replies with them, the worker does the
reverse. A field added here is seen by both sides.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Generic, Literal, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from .nats import Names, ensure_stream
from .tracing import inject

__all__ = [
    "ARGO_DELIVERY_ENV",
    "ARGO_INLINE_LIMIT",
    "ARGO_JOB_ENV",
    "ARGO_JOB_TYPE_ENV",
    "ARGO_REPLY_FILE",
    "ARGO_REPLY_FILE_ENV",
    "ARGO_REPLY_PARAMETER",
    "ARGO_TRACE_ENV",
    "DEAD_LETTERS",
    "DEAD_LETTER_STREAM",
    "HDR_DEAD_REASON",
    "HDR_DELIVERIES",
    "HDR_JOB_ID",
    "HDR_JOB_TYPE",
    "HDR_ORIGINAL_SUBJECT",
    "HDR_REPLY_TO",
    "JOBS_STREAM",
    "JOB_TYPES",
    "ArtifactJob",
    "ArtifactResult",
    "ArtifactType",
    "CiJob",
    "CiResult",
    "DeadLettered",
    "DiscoveryJob",
    "DiscoveryResult",
    "JobRef",
    "JobReply",
    "JobSettings",
    "JobType",
    "Plan",
    "PlannedArtifact",
    "PlannedPhase",
    "PlannedStep",
    "PlannedTask",
    "PublishJob",
    "PublishResult",
    "ReleaseArtifact",
    "ReleaseCreated",
    "ReleaseJob",
    "ReleaseProject",
    "ReleaseResult",
    "ReleaseRule",
    "ReleaseTrigger",
    "StepJob",
    "StepResult",
    "consumer_config",
    "consumer_name",
    "dead_letter",
    "dead_letter_stream_config",
    "decode_headers",
    "decode_reply",
    "ensure_job_streams",
    "inbox_subject",
    "job_headers",
    "job_subject",
    "job_type_of",
    "jobs_stream_config",
    "max_deliveries_advisory",
    "new_attempt",
    "publish_reply",
    "reply_matches",
]

log = structlog.get_logger(__name__)

JobType = Literal["discovery", "ci", "artifact", "release", "publish"]
JOB_TYPES: tuple[JobType, ...] = ("discovery", "ci", "artifact", "release", "publish")
JOBS_STREAM = "PIPELINE_JOBS"
DEAD_LETTER_STREAM = "PIPELINE_DEAD_LETTERS"

# Subject roots per job type (spec: "NATS Message Patterns").
_ROOTS: dict[JobType, str] = {
    "discovery": "pipeline.discovery",
    "ci": "pipeline.tasks",
    "artifact": "pipeline.artifacts",
    "release": "pipeline.releases",
    "publish": "pipeline.publish",
}

HDR_REPLY_TO = "Forge-Reply-To"
HDR_JOB_ID = "Forge-Job-Id"
HDR_JOB_TYPE = "Forge-Job-Type"
HDR_DEAD_REASON = "Forge-Dead-Reason"
HDR_ORIGINAL_SUBJECT = "Forge-Original-Subject"
HDR_DELIVERIES = "Forge-Deliveries"

# Counted where a job is stored on the dead-letter stream: by the worker that gave up on its last
# delivery, or by the dispatcher for a job no worker acknowledged (JetStream's advisory).
DEAD_LETTERS = Counter("forge_dead_letters_total", "Jobs moved to the dead-letter stream", ["job_type"])
for _job_type in JOB_TYPES:
    DEAD_LETTERS.labels(_job_type)


class JobSettings(msgspec.Struct, kw_only=True):
    """Per-job-type timeouts (``FORGE_JOB_TIMEOUT_*``, Go durations) and the delivery limit.

    The dispatcher waits this long for a reply. A repository's phase ``timeout`` overrides
    ``job_timeout_ci`` for that phase's tasks. The consumers' ack wait is ``job_ack_wait``.
    """

    job_timeout_discovery: float = 600.0
    job_timeout_ci: float = 1800.0
    job_timeout_artifact: float = 1200.0
    job_timeout_release: float = 900.0
    job_timeout_publish: float = 600.0
    job_max_deliver: int = 3
    job_max_age: float = 3600.0
    # How long a delivered job may go without an ack or an in-progress heartbeat (workers send
    # one every quarter of it) before JetStream redelivers it: a worker killed mid-job has its
    # job run again elsewhere after at most this long. 0: the job type's timeout.
    job_ack_wait: float = 30.0

    def ack_wait(self, job_type: JobType) -> float:
        return self.job_ack_wait if self.job_ack_wait > 0 else self.timeout(job_type)

    def timeout(self, job_type: JobType) -> float:
        value: float = getattr(self, f"job_timeout_{job_type}")
        return value

    def validate(self) -> list[str]:
        problems = []
        for jt in JOB_TYPES:
            if self.timeout(jt) <= 0:
                problems.append(f"FORGE_JOB_TIMEOUT_{jt.upper()} must be a positive duration")
        if self.job_ack_wait < 0:
            problems.append("FORGE_JOB_ACK_WAIT must be a duration >= 0 (0: the job type's timeout)")
        if self.job_max_deliver < 1:
            problems.append("FORGE_JOB_MAX_DELIVER must be >= 1")
        return problems


# --- the Argo executor ---------------------------------------------------------------------------
# With FORGE_EXECUTOR=argo a CI, artifact or release job is one Argo Workflow whose pod runs
# ``forge-worker run-job`` (forge_worker.single). The job reaches the pod in ARGO_JOB_ENV (base64
# of its JSON: no ``{{`` for Argo's template engine to trip on), the job type in
# ARGO_JOB_TYPE_ENV, the delivery number (Argo's ``{{retries}}`` + 1) in ARGO_DELIVERY_ENV. The
# pod writes its reply (the same JobReply a worker publishes) to the file named by
# ARGO_REPLY_FILE_ENV, which the workflow exports as its output parameter ARGO_REPLY_PARAMETER.
# Job and reply stay under ARGO_INLINE_LIMIT, larger ones travel through S3 as result
# references (forge_common.results): Kubernetes keeps them in a pod's environment, its
# annotations and the workflow's status, objects of bounded size.
ARGO_INLINE_LIMIT = 64 * 1024
ARGO_JOB_ENV = "FORGE_JOB"
ARGO_JOB_TYPE_ENV = "FORGE_JOB_TYPE"
ARGO_DELIVERY_ENV = "FORGE_JOB_DELIVERY"
ARGO_REPLY_FILE_ENV = "FORGE_JOB_REPLY_FILE"
ARGO_REPLY_FILE = "/tmp/forge-job/reply.json"  # noqa: S108 - a path inside the job's own pod
ARGO_REPLY_PARAMETER = "forge-reply"
# The dispatcher's trace context (JSON of traceparent/tracestate): the pod's spans continue it.
ARGO_TRACE_ENV = "FORGE_JOB_TRACE"


# --- jobs ---------------------------------------------------------------------------------------


class JobRef(msgspec.Struct, kw_only=True):
    """The ids every job carries; read from a job whose type is unknown or whose body is not
    inline (a large job travels through S3), hence the defaults."""

    run_id: str = "unknown"
    job_id: str = ""
    task_id: str | None = None
    attempt: str = ""


class DiscoveryJob(msgspec.Struct, kw_only=True):
    """``pipeline.discovery.{run}``: read the repository's configuration at a commit."""

    job_id: str
    run_id: str
    repository: str
    commit_sha: str
    branch: str = ""
    # The dispatch attempt's secret id; the reply must carry it back (see ``JobReply``).
    attempt: str = ""


class StepJob(msgspec.Struct, kw_only=True):
    id: str
    name: str
    action: Literal["shell", "earthly"] = "shell"
    command: str = ""
    timeout_seconds: int | None = None
    # Sandbox limits from project.toml; None: the worker's defaults (FORGE_STEP_MEMORY, ...).
    memory_bytes: int | None = None
    processes: int | None = None
    network: bool = True
    # The step's own environment variables from project.toml (validated at discovery).
    env: dict[str, str] = msgspec.field(default_factory=dict)


class CiJob(msgspec.Struct, kw_only=True):
    """``pipeline.tasks.{run}.{task}``: run one project's steps of one phase (a task)."""

    job_id: str
    run_id: str
    task_id: str
    repository: str
    commit_sha: str
    branch: str = ""
    phase: str
    project: str
    project_path: str = "."
    steps: list[StepJob]
    attempt: str = ""


ArtifactType = Literal["container", "binary", "archive"]


class ArtifactJob(msgspec.Struct, kw_only=True):
    """``pipeline.artifacts.{run}.{artifact}``: build one artifact a project declares on a fresh
    checkout, push the tracking artifact, publish it to its primary destinations.

    ``job_id`` is the artifact's id (its step in the run's ``artifacts`` phase)."""

    job_id: str
    # The dispatch attempt's secret id; the reply must carry it back (see ``JobReply``).
    attempt: str = ""
    run_id: str
    task_id: str
    repository: str
    commit_sha: str
    branch: str = ""
    tag: str | None = None
    project: str
    project_path: str = "."
    name: str
    type: ArtifactType
    build: str
    path: str
    publish: list[str] = msgspec.field(default_factory=list)
    timeout_seconds: int | None = None


class PublishJob(msgspec.Struct, kw_only=True):
    """``pipeline.publish.{run}.{publication}``: publish an artifact a run already built to a
    destination it was not published to at build time: today ``github-release`` for a tag pushed
    onto the run's commit after the artifact job ran. Nothing is rebuilt: the worker pulls the
    tracking artifact by ``digest`` from ``tracking_oci_uri`` (verifying every digest).

    ``job_id`` is the publication's id; the asset is ``{project}-{file name}`` on the Release of
    ``tag``, and publishing it twice is a no-op (GitHub keeps one asset per name)."""

    job_id: str
    attempt: str = ""
    run_id: str
    repository: str
    commit_sha: str
    project: str
    name: str
    type: ArtifactType
    digest: str
    tracking_oci_uri: str
    tag: str
    destination: Literal["github-release"] = "github-release"


class ReleaseTrigger(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why a project is released; sent as is to ``POST /v1/releases``."""

    trigger_type: Literal["branch_push", "tag"]
    branch: str | None = None
    tag: str | None = None
    triggered_by: str | None = None
    # The run author's stable identity ("sub:..." or "github:<id>"), for separation of duties.
    triggered_by_id: str | None = None


class ReleaseArtifact(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One built artifact as a release lists it (``POST /v1/releases`` ``artifacts[]``)."""

    name: str
    type: ArtifactType
    tracking_oci_uri: str
    primary_published_uri: str
    digest: str | None = None
    size: int | None = None


class ReleaseProject(msgspec.Struct, kw_only=True):
    project: str
    trigger: ReleaseTrigger
    artifacts: list[ReleaseArtifact] = msgspec.field(default_factory=list)


class ReleaseJob(msgspec.Struct, kw_only=True):
    """``pipeline.releases.{run}``: create a release per project whose trigger matched."""

    job_id: str
    run_id: str
    repository: str
    commit_sha: str
    projects: list[ReleaseProject]
    attempt: str = ""


# --- replies ------------------------------------------------------------------------------------

R = TypeVar("R")


class JobReply(msgspec.Struct, Generic[R], kw_only=True, omit_defaults=True):
    """What a worker answers for any job; ``result`` is the job type's result Struct.

    ``job_id`` and ``attempt`` echo the job's: the dispatcher accepts a reply only when both
    match the job it waits for (the attempt id is a secret only job consumers ever see), and
    drops anything else (:func:`reply_matches`).
    """

    status: Literal["success", "failed", "cancelled"]
    error: str | None = None
    result: R | None = None
    job_id: str | None = None
    attempt: str | None = None


class DeadLettered(msgspec.Struct, kw_only=True):
    """The result of a ``failed`` reply sent for a job that was dead-lettered."""

    dead_lettered: bool = True


# A trigger rule as written in a project file: {"branch": "<glob>"} or {"tag": true | "<glob>"}.
ReleaseRule = dict[str, str | bool]


class PlannedStep(msgspec.Struct, kw_only=True):
    name: str
    action: Literal["shell", "earthly"] = "shell"
    command: str = ""
    timeout_seconds: int | None = None
    memory_bytes: int | None = None
    processes: int | None = None
    network: bool = True
    env: dict[str, str] = msgspec.field(default_factory=dict)


class PlannedTask(msgspec.Struct, kw_only=True):
    project_name: str
    project_path: str = "."
    steps: list[PlannedStep] = msgspec.field(default_factory=list)


class PlannedArtifact(msgspec.Struct, kw_only=True):
    """One ``[[artifacts]]`` entry of a project file."""

    project: str
    project_path: str = "."
    name: str
    type: ArtifactType
    build: str
    path: str
    publish: list[str] = msgspec.field(default_factory=list)
    timeout_seconds: int | None = None


class PlannedPhase(msgspec.Struct, kw_only=True):
    name: str
    group_number: int
    timeout_seconds: int | None = None
    tasks: list[PlannedTask] = msgspec.field(default_factory=list)


class Plan(msgspec.Struct, kw_only=True):
    """A run's plan as discovery found it: phases -> tasks -> steps, and each project's
    release trigger rules."""

    phases: list[PlannedPhase]
    release_triggers: dict[str, list[ReleaseRule]] = msgspec.field(default_factory=dict)
    # Built once every CI phase succeeded, in a phase named ``artifacts`` after the last group.
    artifacts: list[PlannedArtifact] = msgspec.field(default_factory=list)


class DiscoveryResult(Plan, kw_only=True):
    commit_sha: str


class StepResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    name: str
    status: Literal["success", "failed"]
    exit_code: int | None = None
    logs_s3_key: str | None = None
    error: str | None = None


class CiResult(msgspec.Struct, kw_only=True):
    """The steps that ran (or had run on an earlier delivery), in order. ``reported``: the
    worker's report of the task's outcome was accepted by the pipeline service before this
    reply, so the dispatcher need not check the task's status (it does when False)."""

    steps: list[StepResult] = msgspec.field(default_factory=list)
    reported: bool = False


class ArtifactResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an artifact job built and where it went. ``digest`` is the tracking artifact's
    manifest digest (a container's own image digest); ``size`` the bytes of its content."""

    name: str
    type: ArtifactType
    digest: str = ""
    size: int = 0
    tracking_oci_uri: str = ""
    published_uris: list[str] = msgspec.field(default_factory=list)
    logs_s3_key: str | None = None


class PublishResult(msgspec.Struct, kw_only=True):
    """Where a :class:`PublishJob` put the artifact (the release asset's download URL)."""

    uri: str


class ReleaseCreated(msgspec.Struct, kw_only=True, omit_defaults=True):
    project: str
    release_id: str | None = None
    release_number: int | None = None
    # True when the release service already had this release (a redelivered job).
    existing: bool = False


class ReleaseResult(msgspec.Struct, kw_only=True):
    releases: list[ReleaseCreated] = msgspec.field(default_factory=list)


def decode_reply(value: Any, result_type: type[R]) -> JobReply[R]:
    """A reply decoded from JSON (``value``) with its job type's result. A result that does not
    fit (a dead-letter reply's, or a partial one of a failure) is dropped, not an error: only a
    success's result is acted on."""
    try:
        return msgspec.convert(value, JobReply[result_type])  # type: ignore[valid-type]
    except msgspec.ValidationError:
        if isinstance(value, dict) and value.get("status") != "success":
            return msgspec.convert({k: v for k, v in value.items() if k != "result"}, JobReply[result_type])  # type: ignore[valid-type]
        raise


def reply_matches(value: Any, job_id: str, attempt: str) -> bool:
    """True when a decoded reply names this job and this dispatch attempt (constant-time on
    the attempt id, which is the secret part)."""
    if not isinstance(value, dict) or not attempt:
        return False
    got_job, got_attempt = value.get("job_id"), value.get("attempt")
    if not isinstance(got_job, str) or not isinstance(got_attempt, str) or got_job != job_id:
        return False
    return hmac.compare_digest(got_attempt.encode(), attempt.encode())


def new_attempt() -> str:
    """A fresh dispatch attempt id (128 random bits)."""
    return secrets.token_hex(16)


def job_subject(names: Names, job_type: JobType, run_id: str, job_id: str | None = None) -> str:
    root = _ROOTS[job_type]
    if job_type in ("discovery", "release"):
        return names.subject(f"{root}.{run_id}")
    return names.subject(f"{root}.{run_id}.{job_id}")


def job_headers(names: Names, job_type: JobType, run_id: str, job_id: str, msg_id: str | None = None) -> dict[str, str]:
    """The headers of a job: its reply inbox, id and type, the ``Nats-Msg-Id`` that makes a
    re-publish a no-op, and the current trace context."""
    headers = {
        HDR_REPLY_TO: inbox_subject(names, run_id, job_id),
        HDR_JOB_ID: job_id,
        HDR_JOB_TYPE: job_type,
    }
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    inject(headers)
    return headers


def job_type_of(names: Names, subject: str) -> JobType | None:
    bare = names.strip(subject)
    for jt, root in _ROOTS.items():
        if bare.startswith(root + "."):
            return jt
    return None


def inbox_subject(names: Names, run_id: str, job_id: str) -> str:
    """The unique reply inbox of one job; derived from ids so a successor replica can listen."""
    return names.subject(f"_INBOX.forge.{run_id}.{job_id}")


def jobs_stream_config(names: Names, settings: JobSettings) -> StreamConfig:
    return StreamConfig(
        name=names.stream(JOBS_STREAM),
        subjects=[names.subject(f"{root}.>") for root in _ROOTS.values()],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=settings.job_max_age,
        # Re-publishing a job after a dispatcher takeover uses the same Nats-Msg-Id, so a job
        # that was already published is not queued twice.
        duplicate_window=min(settings.job_max_age, 3600.0),
    )


def dead_letter_stream_config(names: Names) -> StreamConfig:
    return StreamConfig(
        name=names.stream(DEAD_LETTER_STREAM),
        subjects=[names.subject("pipeline.deadletter.>")],
        storage=StorageType.FILE,
        max_age=14 * 24 * 3600.0,
    )


def consumer_name(names: Names, job_type: JobType) -> str:
    return names.durable(f"PIPELINE_{job_type.upper()}")


def consumer_config(names: Names, job_type: JobType, settings: JobSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer_name(names, job_type),
        filter_subject=names.subject(f"{_ROOTS[job_type]}.>"),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait(job_type),
        max_deliver=settings.job_max_deliver,
        max_waiting=4096,
        max_ack_pending=10_000,
    )


async def ensure_job_streams(js: JetStreamContext, names: Names, settings: JobSettings, update: bool = True) -> None:
    """Create (or, with ``update``, reconcile) the job and dead-letter streams and consumers.

    Safe to call from every replica and every worker at start-up. Workers pass
    ``update=False`` so only the dispatcher's settings decide the consumers' ack wait.
    """
    if update:
        await ensure_stream(js, jobs_stream_config(names, settings))
        await ensure_stream(js, dead_letter_stream_config(names))
    else:
        for config in (jobs_stream_config(names, settings), dead_letter_stream_config(names)):
            try:
                await js.stream_info(config.name or "")
            except NotFoundError:
                await ensure_stream(js, config)
    stream = names.stream(JOBS_STREAM)
    for jt in JOB_TYPES:
        if not update:
            try:
                await js.consumer_info(stream, consumer_name(names, jt))
                continue
            except NotFoundError:
                pass
        await js.add_consumer(stream, consumer_config(names, jt, settings))


def max_deliveries_advisory(names: Names) -> str:
    """Advisory subject JetStream publishes when a job exhausted its deliveries."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{names.stream(JOBS_STREAM)}.*"


async def dead_letter(
    js: JetStreamContext,
    names: Names,
    *,
    job_type: JobType,
    run_id: str,
    original_subject: str,
    payload: bytes,
    headers: dict[str, str] | None,
    reason: str,
    deliveries: int,
) -> None:
    """Store a job that will not be retried on the dead-letter stream, with the reason."""
    hdrs = {k: v for k, v in (headers or {}).items() if not k.startswith("Nats-")}
    hdrs[HDR_DEAD_REASON] = reason[:2000]
    hdrs[HDR_ORIGINAL_SUBJECT] = original_subject
    hdrs[HDR_DELIVERIES] = str(deliveries)
    job_id = hdrs.get(HDR_JOB_ID, run_id)
    hdrs["Nats-Msg-Id"] = f"dead:{job_id}"
    await js.publish(names.subject(f"pipeline.deadletter.{job_type}.{run_id}"), payload, headers=hdrs, timeout=5.0)
    DEAD_LETTERS.labels(job_type).inc()


async def publish_reply(nc: NATS, subject: str, body: bytes) -> None:
    """Answer a job on its inbox, with the current trace context in the headers."""
    # Same connection as the later ack, so the server sees the reply first; no flush needed.
    headers: dict[str, str] = {}
    inject(headers)
    await nc.publish(subject, body, headers=headers or None)


def decode_headers(raw: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}
