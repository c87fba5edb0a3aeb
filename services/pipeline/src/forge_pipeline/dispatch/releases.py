"""Release triggers: once a run succeeded, the projects whose triggers match get a release job
on ``pipeline.releases.{run}``, queued through the outbox in the transaction that records it.

The worker retries a release the release service cannot take yet (down, 5xx, 503) with
back-off; a release that fails for good (refused, or still failing when the retries ran out,
or no answer within the release job's timeout) is recorded on the run as ``release_error``
(``GET /v1/runs/{id}``) and counted in ``forge_pipeline_release_failures_total``."""

from __future__ import annotations

import asyncio
import fnmatch
import uuid
from dataclasses import dataclass

import msgspec
import structlog
from prometheus_client import Counter

from forge_common import jobs
from forge_common.jobs import (
    ReleaseArtifact,
    ReleaseJob,
    ReleaseProject,
    ReleaseResult,
    ReleaseRule,
    ReleaseTrigger,
)
from forge_common.outbox import add_message
from forge_pipeline import execution_store, store
from forge_pipeline.records import ArtifactRow, DispatchRun
from forge_pipeline.store import Conn

from .driver import RunDriver

__all__ = ["QueuedRelease", "await_release", "evaluate_release_triggers", "queue_release", "release"]

log = structlog.get_logger(__name__)

RELEASE_FAILURES = Counter(
    "forge_pipeline_release_failures_total",
    "Successful runs whose release could not be made (release_error on the run)",
    ["reason"],
)


def evaluate_release_triggers(
    triggers: dict[str, list[ReleaseRule]] | None, branch: str, tag: str | None
) -> list[ReleaseProject]:
    """Projects to release for a successful run, each with the trigger that matched.

    ``{branch = "main"}`` (a glob) matches branch pushes; ``{tag = true}`` any tag push and
    ``{tag = "v*"}`` matching tags. A tag push wins over a branch rule for the same project.
    """
    out: list[ReleaseProject] = []
    for project, rules in sorted((triggers or {}).items()):
        chosen: ReleaseTrigger | None = None
        for rule in rules or []:
            if "tag" in rule and tag:
                want = rule["tag"]
                if want is True or (isinstance(want, str) and fnmatch.fnmatchcase(tag, want)):
                    chosen = ReleaseTrigger(trigger_type="tag", tag=tag)
                    break
            if "branch" in rule and not tag and chosen is None:
                want = rule["branch"]
                if isinstance(want, str) and fnmatch.fnmatchcase(branch, want):
                    chosen = ReleaseTrigger(trigger_type="branch_push", branch=branch)
        if chosen is not None:
            out.append(ReleaseProject(project=project, trigger=chosen))
    return out


@dataclass(frozen=True)
class QueuedRelease:
    """A release job queued (or submitted) with the evaluation of its run's triggers."""

    job_id: str
    waiter: asyncio.Future[bytes]
    projects: list[ReleaseProject]
    attempt: str


async def release(driver: RunDriver) -> None:
    """Queue the release job of a successful run (at most once per run) and wait for its reply."""
    async with driver.pool.connection() as conn, conn.transaction():
        queued = await queue_release(driver, conn)
    await await_release(driver, queued)


async def queue_release(driver: RunDriver, conn: Conn, fresh: DispatchRun | None = None) -> QueuedRelease | None:
    """Evaluate the triggers of the (successful) run in the caller's transaction and queue the
    release job; None when there is nothing to release or it was evaluated before. The
    evaluation also ends the run's lease (with the job queued in the same transaction, nothing of
    the run is left to claim). ``fresh``: the run as this transaction read it already."""
    job_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"forge:release:{driver.run_id}"))
    # Listening before the job can be published: the relay sends it as soon as we commit.
    attempt = jobs.new_attempt()
    waiter = driver.waiter(job_id, attempt)
    queued = await _queue_release(driver, conn, job_id, attempt, fresh)
    if queued is None:
        return None
    projects, attempt = queued
    return QueuedRelease(job_id=job_id, waiter=waiter, projects=projects, attempt=attempt)


async def await_release(driver: RunDriver, queued: QueuedRelease | None) -> None:
    """Wait for the reply of the release job ``queue_release`` queued (committed since)."""
    if queued is None:
        return
    waiter, projects = queued.waiter, queued.projects
    # On Argo, a workflow a predecessor submitted for this run answers with its own attempt.
    driver.waiter(queued.job_id, queued.attempt)
    if driver.runtime.relay is not None:
        driver.runtime.relay.wake()
    log.info("dispatcher.release_queued", run_id=driver.run_id, projects=[p.project for p in projects])
    timeout = driver.job_settings.timeout("release")
    try:
        raw = await asyncio.wait_for(waiter, timeout + driver.queue.deadline_grace("release"))
    except TimeoutError:
        log.warning("dispatcher.release_timeout", run_id=driver.run_id)
        await record_release_failure(driver, f"the release job did not answer within {int(timeout)}s", "timeout")
        return
    reply = await driver.queue.read_reply(raw, ReleaseResult)
    log_fn = log.info if reply.status == "success" else log.warning
    log_fn("dispatcher.release_done", run_id=driver.run_id, status=reply.status, error=reply.error, result=reply.result)
    if reply.status != "success":
        await record_release_failure(driver, reply.error or f"the release job ended {reply.status}", "failed")


async def record_release_failure(driver: RunDriver, error: str, reason: str) -> None:
    RELEASE_FAILURES.labels(reason).inc()
    async with driver.pool.connection() as conn, conn.transaction():
        await store.set_release_error(conn, driver.run_id, error)


def _built_artifacts(rows: list[ArtifactRow]) -> dict[str, list[ReleaseArtifact]]:
    """Each project's built artifacts as its release lists them (a run reaches its release
    only when all of them were built). The primary URI is the first destination published to,
    else the tracking artifact itself."""
    out: dict[str, list[ReleaseArtifact]] = {}
    for row in rows:
        if row.status != "success" or not row.tracking_oci_uri or not row.digest:
            continue
        out.setdefault(row.project, []).append(
            ReleaseArtifact(
                name=row.name,
                type=row.artifact_type,
                tracking_oci_uri=row.tracking_oci_uri,
                primary_published_uri=row.published_uris[0] if row.published_uris else row.tracking_oci_uri,
                digest=row.digest,
                size=row.size,
            )
        )
    return out


async def _queue_release(
    driver: RunDriver, conn: Conn, job_id: str, attempt: str, fresh: DispatchRun | None
) -> tuple[list[ReleaseProject], str] | None:
    """Evaluate the triggers and queue the job; the projects and the job's dispatch attempt, or
    None when there is nothing to release (or another driver already evaluated this run).

    On Argo the workflow is submitted inside the transaction that records the evaluation: a
    submission that fails rolls it back (the run is evaluated again later), a commit that fails
    after it leaves a workflow the next evaluation adopts (its name derives from the run)."""
    run_id = driver.run_id
    names = driver.runtime.names
    fresh = fresh or await execution_store.run_for_dispatch(conn, run_id)
    if fresh is None or fresh.status != "success" or fresh.release_evaluated_at is not None:
        return None
    # The lease ends here too: if the transaction commits, nothing of the run is left to drive.
    if not await execution_store.mark_release_evaluated(conn, run_id, driver.owner):
        return None
    projects = evaluate_release_triggers(fresh.release_triggers, fresh.branch, fresh.tag)
    built = _built_artifacts(await execution_store.run_artifacts(conn, run_id)) if projects else {}
    for project in projects:
        # The release service records the run's author (not the worker) as the trigger.
        project.trigger.triggered_by = fresh.triggered_by
        project.artifacts = built.get(project.project, [])
        project.trigger.triggered_by_id = fresh.triggered_by_id
    if not projects:
        return None
    job = ReleaseJob(
        job_id=job_id,
        run_id=run_id,
        repository=fresh.repository,
        commit_sha=fresh.commit_sha,
        projects=projects,
        attempt=attempt,
    )
    if driver.queue.on_argo("release"):
        attempt = await driver.queue.dispatch("release", job, job_id, driver.job_settings.timeout("release"))
    else:
        headers = jobs.job_headers(names, "release", run_id, job_id)
        # Queued with the decision: the relay publishes it (Nats-Msg-Id = job id) even if
        # this replica dies right after the commit.
        body = msgspec.json.encode(job)
        await add_message(conn, "pipeline", job_id, f"pipeline.releases.{run_id}", body, headers)
    return projects, attempt
