"""Phase groups, in ascending order: every unfinished task of a group is a CI job on
``pipeline.tasks.{run}.{task}``, published concurrently. Workers report task and step status
through the HTTP API (whose roll-ups finish phases and fail or complete the run) and reply.

A driver that takes a run over reloads the tree, skips finished tasks and re-publishes the
unfinished ones with their original ``Nats-Msg-Id`` (JetStream drops the copy if the first
publish got through) and their original deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec
import structlog

from forge_common import jobs
from forge_pipeline import execution_store, service, store
from forge_pipeline.domain import ACTIVE_RUN_STATUSES, ARTIFACTS_PHASE, FINISHED, PhasePlan, TaskPlan
from forge_pipeline.records import DispatchRun

from .artifacts import run_artifacts
from .driver import RunDriver, RunEnded
from .releases import QueuedRelease, queue_release
from .timeouts import TaskDeadlines

__all__ = ["Completed", "run_groups"]

log = structlog.get_logger(__name__)

# task id -> (its phase, the task)
GroupTasks = dict[str, tuple[PhasePlan, TaskPlan]]


@dataclass(frozen=True)
class Completed:
    """How the groups ended: ``release_evaluated`` when the run's release triggers were
    evaluated in the transaction that completed it (a run without artifacts: no tag
    publication can come first), with the release job then queued, if any."""

    release_evaluated: bool = False
    release: QueuedRelease | None = None


async def run_groups(driver: RunDriver, run: DispatchRun, plan: list[PhasePlan] | None = None) -> Completed:
    """Run the groups of ``plan`` (the stored plan discovery just returned, else read here)
    still to do, then complete the run."""
    if plan is None:
        async with driver.pool.connection() as conn:
            plan = await service.load_plan(conn, driver.run_id)
    groups: dict[int, list[PhasePlan]] = {}
    for phase in plan:
        groups.setdefault(phase.group_number, []).append(phase)
    for number in sorted(groups):
        phases = groups[number]
        if any(p.status == "failed" for p in phases):
            await driver.fail_if_active("a phase failed")
            raise RunEnded
        if all(p.status in ("success", "skipped") for p in phases):
            continue
        if [p.name for p in phases] == [ARTIFACTS_PHASE]:
            await run_artifacts(driver, run, phases[0])
            continue
        await _run_group(driver, run, phases)
    # Without artifacts there is nothing to attach to a tag's release first: the release is
    # evaluated (and its job queued) with the completion, one transaction for both. On Argo
    # the release workflow is submitted by its own transaction (a failed submission must not
    # undo the completion).
    fold = ARTIFACTS_PHASE not in (p.name for p in plan) and not driver.queue.on_argo("release")
    # The run is usually complete already (the roll-up of its last task's report did it): when
    # the release follows, the run it reads tells, and a complete run is neither locked nor its
    # tree version bumped.
    async with driver.pool.connection() as conn, conn.transaction():
        fresh = await execution_store.run_for_dispatch(conn, driver.run_id) if fold else None
        completed = False
        if fresh is None or fresh.status in ACTIVE_RUN_STATUSES:
            completed = await service.complete_run(conn, driver.run_id)
            fresh = None  # read again by queue_release
        queued = await queue_release(driver, conn, fresh) if fold else None
    if completed:
        log.info("dispatcher.completed", run_id=driver.run_id)
    return Completed(release_evaluated=fold, release=queued)


async def _run_group(driver: RunDriver, run: DispatchRun, phases: list[PhasePlan]) -> None:
    tasks: GroupTasks = {t.id: (p, t) for p in phases for t in p.tasks if t.id and t.status not in FINISHED}
    deadlines, attempts = await _start_group(driver, phases, tasks)
    if not tasks:
        return
    replies = {task_id: driver.waiter(task_id, attempts[task_id]) for task_id in tasks}
    dispatched = await asyncio.gather(
        *(
            driver.queue.dispatch(
                "ci",
                _ci_job(driver, run, phase, task, attempts[task_id]),
                f"ci:{task_id}",
                deadlines.timeout(task_id),
            )
            for task_id, (phase, task) in tasks.items()
        )
    )
    # An Argo workflow a predecessor submitted answers with its own attempt.
    for task_id, attempt in zip(tasks, dispatched, strict=True):
        driver.waiter(task_id, attempt)
    recorded = await _await_replies(driver, tasks, replies, deadlines)
    await _settle(driver, [task_id for task_id in tasks if task_id not in recorded])


async def _start_group(
    driver: RunDriver, phases: list[PhasePlan], tasks: GroupTasks
) -> tuple[TaskDeadlines, dict[str, str]]:
    """Finish the group's empty phases and record the first dispatch of its tasks; their
    deadlines and dispatch attempt ids."""
    empty = [p for p in phases if not p.tasks and p.status not in FINISHED]
    async with driver.pool.connection() as conn, conn.transaction():
        for phase in empty:
            assert phase.id is not None
            await store.finish_phase(conn, phase.id, "success")
        dispatched = await execution_store.mark_dispatched(conn, list(tasks)) if tasks else {}
    deadlines = TaskDeadlines()
    for task_id, (phase, _task) in tasks.items():
        timeout = float(phase.timeout_seconds) if phase.timeout_seconds else driver.job_settings.timeout("ci")
        first, db_now = dispatched[task_id].dispatched_at, dispatched[task_id].now
        deadlines.add(task_id, timeout, first, db_now, grace=driver.queue.deadline_grace("ci"))
    return deadlines, {task_id: row.attempt for task_id, row in dispatched.items()}


async def _await_replies(
    driver: RunDriver, tasks: GroupTasks, replies: dict[str, asyncio.Future[bytes]], deadlines: TaskDeadlines
) -> set[str]:
    """Until every task replied success; a failure or a timeout fails the run (RunEnded).
    The tasks whose worker says their outcome is recorded already (``CiResult.reported``)."""
    recorded: set[str] = set()
    pending = dict(replies)
    check_every = driver.settings.dispatcher_check_interval
    while pending:
        wait = deadlines.wait_time(list(pending), check_every)
        done, _ = await asyncio.wait(pending.values(), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        by_future = {f: t for t, f in pending.items()}
        failed: list[tuple[str, str]] = []
        for fut in done:
            task_id = by_future[fut]
            del pending[task_id]
            reply = await driver.queue.read_reply(fut.result(), jobs.CiResult)
            if reply.status != "success":
                failed.append((task_id, reply.error or f"task {reply.status}"))
            elif reply.result is not None and reply.result.reported:
                recorded.add(task_id)
        if failed:
            await _task_failures(driver, failed, tasks)
            raise RunEnded
        if not pending:
            break
        overdue = deadlines.overdue(list(pending))
        if overdue:
            errors = []
            for task_id in overdue:
                errors.append((task_id, deadlines.error(task_id, tasks[task_id][0])))
                await driver.queue.withdraw("ci", driver.run_id, task_id)
            await _task_failures(driver, errors, tasks, timed_out=True)
            raise RunEnded
        if not done:
            await _reconcile(driver, pending)
    return recorded


async def _settle(driver: RunDriver, task_ids: list[str]) -> None:
    """Every task of the group answered success. One whose report did not land (the worker
    replied but its status call was refused or lost) is recorded from the reply, so the
    roll-up finishes its phase before the next group starts."""
    if not task_ids:
        return
    async with driver.pool.connection() as conn:
        states = await execution_store.task_states(conn, task_ids)
    missing = [t for t, s in states.items() if s.status not in FINISHED]
    if not missing:
        return
    async with driver.pool.connection() as conn, conn.transaction():
        for task_id in missing:
            current = (await execution_store.task_states(conn, [task_id]))[task_id].status
            if current == "pending":
                await service.mark_task(conn, task_id, "running")
            if current in ("pending", "running"):
                await service.mark_task(conn, task_id, "success")
    log.warning("dispatcher.settled_from_replies", run_id=driver.run_id, tasks=len(missing))


def _ci_job(driver: RunDriver, run: DispatchRun, phase: PhasePlan, task: TaskPlan, attempt: str) -> jobs.CiJob:
    # A plan loaded from the database has every id.
    assert task.id is not None
    return jobs.CiJob(
        job_id=task.id,
        run_id=driver.run_id,
        task_id=task.id,
        repository=run.repository,
        commit_sha=run.commit_sha,
        branch=run.branch,
        phase=phase.name,
        project=task.project_name,
        project_path=task.project_path,
        attempt=attempt,
        steps=[
            jobs.StepJob(
                id=s.id or "",
                name=s.name,
                action=s.action,
                command=s.command,
                timeout_seconds=s.timeout_seconds,
                memory_bytes=s.memory_bytes,
                processes=s.processes,
                network=s.network,
                env=s.env,
            )
            for s in task.steps
        ],
    )


async def _reconcile(driver: RunDriver, pending: dict[str, asyncio.Future[bytes]]) -> None:
    """No reply for a while: the database may know more (a reply lost during a takeover,
    or the run cancelled or failed by someone else)."""
    async with driver.pool.connection() as conn:
        status = await execution_store.run_status(conn, driver.run_id)
        states = await execution_store.task_states(conn, list(pending))
    if status not in ("pending", "running"):
        raise RunEnded
    for task_id, state in states.items():
        if state.status in FINISHED and not pending[task_id].done():
            reply = jobs.JobReply[jobs.CiResult](
                status="success" if state.status in ("success", "skipped") else "failed",
                error=state.error,
            )
            pending[task_id].set_result(msgspec.json.encode(reply))


async def _task_failures(
    driver: RunDriver, failed: list[tuple[str, str]], tasks: GroupTasks, timed_out: bool = False
) -> None:
    """Fail the tasks the database does not know as finished yet (timeouts, dead letters,
    workers that could not report); the roll-up then fails the run. Then stop the rest."""
    run_id = driver.run_id
    async with driver.pool.connection() as conn, conn.transaction():
        states = await execution_store.task_states(conn, [t for t, _ in failed])
        for task_id, error in failed:
            if (state := states.get(task_id)) is None or state.status not in FINISHED:
                await service.mark_task(conn, task_id, "failed", error)
    # The run is over (the roll-up failed it); make sure of it, then stop what still runs:
    # the failing phase is failed, tasks of the group still running are cancelled.
    phase, task = tasks[failed[0][0]]
    async with driver.pool.connection() as conn, conn.transaction():
        status = await execution_store.run_status(conn, run_id)
        if status in ("pending", "running"):
            message = f"task {task.project_name} of phase {phase.name} failed: {failed[0][1]}"
            await service.fail_run(conn, run_id, message, phase.name)
        await store.lock_run(conn, run_id)
        for phase_id in {tasks[task_id][0].id for task_id, _ in failed}:
            if phase_id is not None:
                await execution_store.fail_phase_if_open(conn, phase_id)
        await store.close_open_work(conn, run_id)
    await driver.queue.cancel_workers(run_id)
    log.info("dispatcher.run_failed", run_id=run_id, phase=phase.name, timed_out=timed_out)
