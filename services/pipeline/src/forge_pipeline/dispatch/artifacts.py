"""The ``artifacts`` phase: once every CI phase succeeded, one job per declared artifact on
``pipeline.artifacts.{run}.{artifact}``, all at once.

Unlike a CI group this phase does not stop at the first failure: every artifact reports its own
outcome (a broken container build says nothing about the binary next to it). The reply is the
artifact's record: its step's outcome and, built, its digest, size and URIs are written in one
transaction under the run lock; then each project's task is finished, and the roll-up fails the
run (``failed_phase: "artifacts"``, no release) or completes it.

A worker reports only ``running`` for the build step; its outcome comes from the reply, so a
step never says ``success`` without the artifact's digest next to it. Deadlines count from the
tasks' first dispatch, as for CI tasks, so a replica taking the run over does not extend them.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog

from forge_common import jobs
from forge_pipeline import execution_store, service, store
from forge_pipeline.domain import FINISHED, PhasePlan, StepReport, TaskReport
from forge_pipeline.records import ArtifactRow, DispatchRun, WorkStatus

from .driver import RunDriver, RunEnded, format_seconds
from .timeouts import TaskDeadlines

__all__ = ["run_artifacts"]

log = structlog.get_logger(__name__)

# The worker enforces an artifact's timeout on its build; the dispatcher waits this much longer
# so that the worker's own account of a timeout (with the build log) arrives first.
REPLY_GRACE = 15.0


class _Outcome(msgspec.Struct, kw_only=True):
    status: str  # "success" | "failed"
    error: str | None = None
    result: jobs.ArtifactResult | None = None


async def run_artifacts(driver: RunDriver, run: DispatchRun, phase: PhasePlan) -> None:
    async with driver.pool.connection() as conn:
        artifacts = await execution_store.run_artifacts(conn, driver.run_id)
    todo = {a.id: a for a in artifacts if a.status not in FINISHED}
    if todo:
        outcomes = await _build_all(driver, run, todo)
        await _record(driver, todo, outcomes, run.tag)
    await _finish_tasks(driver, phase)


async def _build_all(driver: RunDriver, run: DispatchRun, todo: dict[str, ArtifactRow]) -> dict[str, _Outcome]:
    task_ids = sorted({a.task_id for a in todo.values()})
    async with driver.pool.connection() as conn, conn.transaction():
        dispatched = await execution_store.mark_dispatched(conn, task_ids)
    deadlines = TaskDeadlines()
    for artifact in todo.values():
        first = dispatched[artifact.task_id]
        grace = REPLY_GRACE + driver.queue.deadline_grace("artifact")
        deadlines.add(artifact.id, _timeout(driver, artifact), first.dispatched_at, first.now, grace=grace)
    attempts = {artifact_id: jobs.new_attempt() for artifact_id in todo}
    replies = {artifact_id: driver.waiter(artifact_id, attempts[artifact_id]) for artifact_id in todo}
    # On Argo the workflow's deadline leaves the worker's own account of a timeout time to arrive.
    answering = await asyncio.gather(
        *(
            driver.queue.dispatch(
                "artifact", _job(run, a, attempts[a.id]), f"artifact:{a.id}", _timeout(driver, a) + REPLY_GRACE
            )
            for a in todo.values()
        )
    )
    for artifact_id, attempt in zip(todo, answering, strict=True):
        driver.waiter(artifact_id, attempt)
    log.info("dispatcher.artifacts_dispatched", run_id=driver.run_id, artifacts=len(todo))
    outcomes: dict[str, _Outcome] = {}
    pending = dict(replies)
    while pending:
        wait = deadlines.wait_time(list(pending), driver.settings.dispatcher_check_interval)
        done, _ = await asyncio.wait(pending.values(), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        by_future = {f: a for a, f in pending.items()}
        for future in done:
            artifact_id = by_future[future]
            del pending[artifact_id]
            outcomes[artifact_id] = await _read(driver, future.result())
        for artifact_id in deadlines.overdue(list(pending)):
            del pending[artifact_id]
            artifact = todo[artifact_id]
            await driver.queue.withdraw("artifact", driver.run_id, artifact_id)
            why = f"timed out after {format_seconds(_timeout(driver, artifact))}"
            outcomes[artifact_id] = _Outcome(status="failed", error=why)
        if not done and pending:
            await _check_still_running(driver)
    return outcomes


def _timeout(driver: RunDriver, artifact: ArtifactRow) -> float:
    return float(artifact.timeout_seconds) if artifact.timeout_seconds else driver.job_settings.timeout("artifact")


async def _check_still_running(driver: RunDriver) -> None:
    """A cancelled run ends the wait (its driver is cancelled too; this covers another replica)."""
    async with driver.pool.connection() as conn:
        status = await execution_store.run_status(conn, driver.run_id)
    if status not in ("pending", "running"):
        raise RunEnded


async def _read(driver: RunDriver, raw: bytes) -> _Outcome:
    try:
        reply = await driver.queue.read_reply(raw, jobs.ArtifactResult)
    except msgspec.ValidationError as exc:
        return _Outcome(status="failed", error=f"the worker sent an unusable reply: {exc}")
    if reply.status == "success" and reply.result is not None and reply.result.digest:
        return _Outcome(status="success", result=reply.result)
    return _Outcome(status="failed", error=reply.error or f"artifact job {reply.status}", result=reply.result)


def _job(run: DispatchRun, artifact: ArtifactRow, attempt: str) -> jobs.ArtifactJob:
    return jobs.ArtifactJob(
        job_id=artifact.id,
        attempt=attempt,
        run_id=run.id,
        task_id=artifact.task_id,
        repository=run.repository,
        commit_sha=run.commit_sha,
        branch=run.branch,
        tag=run.tag,
        project=artifact.project,
        project_path=artifact.project_path,
        name=artifact.name,
        type=artifact.artifact_type,
        build=artifact.build,
        path=artifact.path,
        publish=artifact.publish,
        timeout_seconds=artifact.timeout_seconds,
    )


async def _record(
    driver: RunDriver, todo: dict[str, ArtifactRow], outcomes: dict[str, _Outcome], tag: str | None
) -> None:
    """Each artifact's outcome and its step's, in one transaction. An artifact built for a tag
    (its job carried ``tag``) that declares ``github-release`` was attached to that tag's
    release by the job: recorded as done, so ``publications.py`` does not publish it again."""
    async with driver.pool.connection() as conn, conn.transaction():
        if await store.lock_run(conn, driver.run_id) is None:
            return
        states = await _step_states(conn, list(outcomes))
        for artifact_id, outcome in outcomes.items():
            result = outcome.result or jobs.ArtifactResult(name="", type="binary")
            built = outcome.status == "success"
            await execution_store.record_artifact(
                conn,
                artifact_id,
                digest=result.digest if built else None,
                size=result.size if built else None,
                tracking_oci_uri=result.tracking_oci_uri or None,
                published_uris=result.published_uris,
                error=outcome.error,
            )
            declared = todo[artifact_id].publish
            if built and tag and "github-release" in declared:
                # Every destination before it succeeded, so the URIs follow the declared order.
                index = declared.index("github-release")
                uri = result.published_uris[index] if index < len(result.published_uris) else None
                await execution_store.record_build_publication(conn, artifact_id, driver.run_id, tag, uri)
            if states.get(artifact_id) in FINISHED:
                continue
            status: WorkStatus = "success" if built else "failed"
            step = StepReport(id=artifact_id, status=status, logs_s3_key=result.logs_s3_key)
            report = TaskReport(task_id=todo[artifact_id].task_id, steps=(step,), internal=True, through_running=True)
            await service.report_task(conn, report)
    for artifact_id, outcome in outcomes.items():
        artifact = todo[artifact_id]
        log.info(
            "dispatcher.artifact_done",
            run_id=driver.run_id,
            project=artifact.project,
            artifact=artifact.name,
            status=outcome.status,
            error=outcome.error,
        )


async def _step_states(conn: store.Conn, step_ids: list[str]) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT id::text AS id, status::text AS status FROM pipeline.steps WHERE id = ANY(%s::uuid[])", (step_ids,)
    )
    return {str(row["id"]): str(row["status"]) for row in await cur.fetchall()}


async def _finish_tasks(driver: RunDriver, phase: PhasePlan) -> None:
    """Each project's task: success when all its artifacts were built, else failed with every
    failed artifact named. The roll-up fails the run in phase ``artifacts`` or completes it."""
    async with driver.pool.connection() as conn, conn.transaction():
        artifacts = await execution_store.run_artifacts(conn, driver.run_id)
        by_task: dict[str, list[ArtifactRow]] = {}
        for artifact in artifacts:
            by_task.setdefault(artifact.task_id, []).append(artifact)
        states = await execution_store.task_states(conn, list(by_task))
        for task_id, built in sorted(by_task.items(), key=lambda item: item[1][0].project):
            if states[task_id].status in FINISHED:
                continue
            failed = [a for a in built if a.status != "success"]
            if states[task_id].status == "pending":
                await service.mark_task(conn, task_id, "running")
            if failed:
                causes = "; ".join(f"artifact {a.name}: {a.error or 'failed'}" for a in failed)
                await service.mark_task(conn, task_id, "failed", causes)
            else:
                await service.mark_task(conn, task_id, "success")
    if any(a.status != "success" for a in artifacts):
        raise RunEnded
