"""Use cases of the pipeline service.

Every function takes an open connection inside a transaction the caller owns, so the same
function serves the HTTP API, the GitHub webhook and the in-process dispatcher (which calls
``store_discovery``, ``mark_task``, ``mark_step``, ``complete_run``, ``fail_run`` directly).
State change, events (outbox) and commit statuses are written in that one transaction.

Locking: every change to a run's tree first locks the run row (``store.lock_run``); reports
for one run therefore serialise, roll-ups see a consistent tree, and there is a single lock
order (run, then its children) so concurrent updates cannot deadlock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from forge_common.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from forge_common.events import PipelineRunCompleted, PipelineRunCreated, PipelineRunFailed, isoformat
from forge_common.outbox import add_event

from . import domain, store
from .domain import PhasePlan, StepPlan, TaskPlan
from .presign import Presigner
from .store import Conn, Row

__all__ = [
    "TreeCache",
    "cancel_run",
    "complete_run",
    "create_run",
    "create_run_tx",
    "fail_run",
    "get_run",
    "list_runs",
    "load_plan",
    "mark_step",
    "mark_task",
    "parse_uuid",
    "report_task",
    "run_tree_json",
    "step_view",
    "store_discovery",
    "task_view",
]

log = structlog.get_logger(__name__)
SCHEMA = "pipeline"
DEFAULT_MAX_ACTIVE_RUNS = 100


def parse_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(f"{what} id must be a UUID", {"field": "id", "value": str(value)[:100]}) from None


def _iso(value: dt.datetime | None) -> str | None:
    return isoformat(value) if value is not None else None


def _fingerprint(repository: str, branch: str, commit_sha: str, trigger_type: str) -> str:
    return hashlib.sha256(f"{repository}\n{branch}\n{commit_sha}\n{trigger_type}".encode()).hexdigest()


async def _commit_status(conn: Conn, run: Row, run_status: str) -> None:
    state, description = domain.commit_state_for(run_status)
    await store.add_commit_status(conn, run["id"], run["repository"], run["commit_sha"], state, description)


async def create_run_tx(pool: AsyncConnectionPool[Conn], **kwargs: Any) -> tuple[Row, bool]:
    """``create_run`` in a transaction of its own. A unique violation can only come from a
    concurrent request racing for the same Idempotency-Key in another repository (runs of one
    repository are created one at a time); the retry then finds the winner's run."""
    for attempt in range(2):
        try:
            async with pool.connection() as conn, conn.transaction():
                return await create_run(conn, **kwargs)
        except psycopg.errors.UniqueViolation:
            if attempt == 1:
                raise Conflict("a conflicting run was created concurrently; retry the request") from None
    raise AssertionError("unreachable")


# --- runs ---------------------------------------------------------------------------------------


async def create_run(
    conn: Conn,
    *,
    repository: str,
    branch: str,
    commit_sha: str,
    trigger_type: str,
    triggered_by: str,
    idempotency_key: str | None = None,
    tag: str | None = None,
    pull_request_number: int | None = None,
    max_active: int = DEFAULT_MAX_ACTIVE_RUNS,
) -> tuple[Row, bool]:
    """Store a pending run and its ``pipeline.run.created`` event. Returns ``(run, created)``;
    ``created`` is False when an Idempotency-Key retry returns the run made the first time."""
    domain.validate_repository(repository)
    domain.validate_branch(branch)
    commit_sha = domain.normalize_commit_sha(commit_sha)
    domain.validate_identity(triggered_by)
    if trigger_type not in ("push", "pull_request", "manual"):
        raise InvalidRequest("trigger_type must be one of push, pull_request, manual", {"field": "trigger_type"})
    domain.validate_idempotency_key(idempotency_key)
    fingerprint = _fingerprint(repository, branch, commit_sha, trigger_type)

    # One creation at a time per repository: the active-run count and the duplicate check
    # below cannot be raced past (150 concurrent creates leave exactly 100 runs).
    by_key, existing, active = await store.creation_checks(conn, repository, commit_sha, triggered_by, idempotency_key)
    if by_key is not None:
        if by_key["request_fingerprint"] != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used for a different request",
                {"existing_id": by_key["id"], "idempotency_key": idempotency_key},
            )
        return by_key, False
    if existing is not None:
        raise Conflict(
            f"a run already exists for {repository} at {commit_sha}",
            {"existing_id": existing["id"], "repository": repository, "commit_sha": commit_sha},
        )
    if active >= max_active:
        raise LimitExceeded(
            f"{repository} already has {active} pending or running runs (limit {max_active})",
            {"repository": repository, "limit": max_active, "active": active},
        )
    # Run, event and commit status: one round trip.
    run_id = str(uuid.uuid4())
    state, description = domain.commit_state_for("pending")
    async with conn.pipeline():
        cur = await store.insert_run(
            conn,
            run_id=run_id,
            repository=repository,
            branch=branch,
            commit_sha=commit_sha,
            triggered_by=triggered_by,
            trigger_type=trigger_type,
            tag=tag,
            pull_request_number=pull_request_number,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
        )
        await add_event(
            conn,
            SCHEMA,
            PipelineRunCreated(
                run_id=run_id, repository=repository, branch=branch, commit_sha=commit_sha, triggered_by=triggered_by
            ),
        )
        await store.add_commit_status(conn, run_id, repository, commit_sha, state, description)
    run = await cur.fetchone()
    assert run is not None
    log.info("pipeline.run_created", run_id=run_id, repository=repository, commit_sha=commit_sha)
    return run, True


async def get_run(conn: Conn, run_id: str) -> Row:
    run = await store.get_run(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    return run


async def list_runs(conn: Conn, query: domain.ListQuery) -> dict[str, Any]:
    rows, total = await store.list_runs(conn, query.repository, query.branch, query.status, query.limit, query.offset)
    return {
        "runs": [
            {
                "id": r["id"],
                "repository": r["repository"],
                "commit_sha": r["commit_sha"],
                "status": r["status"],
                "started_at": isoformat(r["started_at"]),
            }
            for r in rows
        ],
        "total": total,
        "limit": query.limit,
        "offset": query.offset,
    }


_encoder = msgspec.json.Encoder()


class TreeCache:
    """Recently served run trees by ``(run id)``, valid while the run's ``tree_version`` and
    the presigning window are unchanged; bounded in bytes, least recently used out first."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[int, int, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, run_id: str, version: int, window: int) -> bytes | None:
        entry = self._entries.get(run_id)
        if entry is None or entry[0] != version or entry[1] != window:
            return None
        self._entries.move_to_end(run_id)
        return entry[2]

    def put(self, run_id: str, version: int, window: int, body: bytes) -> None:
        old = self._entries.pop(run_id, None)
        if old is not None:
            self._bytes -= len(old[2])
        if len(body) > self.max_bytes // 4:
            return
        self._entries[run_id] = (version, window, body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self._bytes -= len(evicted)


async def run_tree_json(
    conn: Conn, run_id: str, presigner: Presigner | None, logs_url_ttl: int, cache: TreeCache | None = None
) -> bytes:
    """The spec's Get Pipeline Run body: a version check (one indexed lookup), then, unless
    the cached body is current, the tree from one database round trip whatever its size."""
    signer = presigner.shared(logs_url_ttl) if presigner is not None else None
    window = signer.start if signer is not None else 0
    if cache is not None:
        version = await store.tree_version(conn, run_id)
        if version is None:
            raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
        cached = cache.get(run_id, version, window)
        if cached is not None:
            return cached
    run, phase_rows, task_rows, step_rows = await store.tree_rows(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})

    steps_by_task: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for task_id, position, sid, name, status, exit_code, logs_key in step_rows:
        step: dict[str, Any] = {"id": sid, "name": name, "status": status, "exit_code": exit_code}
        if logs_key and signer is not None:
            step["logs_url"] = signer.url(logs_key)
        bucket = steps_by_task.get(task_id)
        if bucket is None:
            steps_by_task[task_id] = [(position, step)]
        else:
            bucket.append((position, step))

    tasks_by_phase: dict[str, list[dict[str, Any]]] = {}
    for tid, phase_id, project, status in task_rows:
        ordered = sorted(steps_by_task.get(tid, ()), key=_first)
        task = {"id": tid, "project_name": project, "status": status, "steps": [s for _, s in ordered]}
        tasks_by_phase.setdefault(phase_id, []).append(task)

    phases = [
        {
            "id": pid,
            "name": name,
            "group_number": group,
            "status": status,
            "started_at": _iso(started),
            "completed_at": _iso(completed),
            "tasks": tasks_by_phase.get(pid, []),
        }
        for pid, name, group, status, started, completed in phase_rows
    ]
    body = {
        "id": run["id"],
        "repository": run["repository"],
        "branch": run["branch"],
        "commit_sha": run["commit_sha"],
        "status": run["status"],
        "triggered_by": run["triggered_by"],
        "trigger_type": run["trigger_type"],
        "started_at": isoformat(run["started_at"]),
        "completed_at": _iso(run["completed_at"]),
        # Beyond the spec: why a run failed (discovery/validation message, timeout, dead letter).
        "error": run["error"],
        "failed_phase": run["failed_phase"],
        "phases": phases,
    }
    encoded = _encoder.encode(body)
    if cache is not None:
        # Under the version read with the tree: the tree rows are at least that new.
        cache.put(run_id, run["tree_version"], window, encoded)
    return encoded


def _first(item: tuple[int, Any]) -> int:
    return item[0]


async def _lock_active_run(conn: Conn, run_id: str) -> Row | None:
    """The locked run if it is still pending or running, else ``None``."""
    run = await store.lock_run(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    return run if run["status"] in domain.ACTIVE_RUN_STATUSES else None


def _duration_seconds(run: Row) -> int:
    seconds: float = (run["completed_at"] - run["started_at"]).total_seconds()
    return max(0, round(seconds))


def _run_completed(run: Row, status: Literal["success", "failed"]) -> PipelineRunCompleted:
    return PipelineRunCompleted(
        run_id=run["id"],
        repository=run["repository"],
        commit_sha=run["commit_sha"],
        status=status,
        duration_seconds=_duration_seconds(run),
    )


async def complete_run(conn: Conn, run_id: str) -> bool:
    """Mark an active run ``success`` (event ``pipeline.run.completed``). False when the run was
    already finished (idempotent: a second call emits nothing)."""
    if await _lock_active_run(conn, run_id) is None:
        return False
    run = await store.finish_run(conn, run_id, "success")
    await add_event(conn, SCHEMA, _run_completed(run, "success"))
    await _commit_status(conn, run, "success")
    log.info("pipeline.run_succeeded", run_id=run_id)
    return True


async def fail_run(conn: Conn, run_id: str, error_message: str, failed_phase: str | None = None) -> bool:
    """Mark an active run ``failed``: what never started becomes ``skipped``, running work may
    still report; events ``pipeline.run.failed`` and ``pipeline.run.completed``. False (and
    nothing emitted) when the run was already finished."""
    if await _lock_active_run(conn, run_id) is None:
        return False
    await store.skip_pending_work(conn, run_id)
    run = await store.finish_run(conn, run_id, "failed", error_message, failed_phase)
    await add_event(
        conn,
        SCHEMA,
        PipelineRunFailed(
            run_id=run_id,
            repository=run["repository"],
            commit_sha=run["commit_sha"],
            failed_phase=failed_phase or "",
            error_message=error_message,
        ),
    )
    await add_event(conn, SCHEMA, _run_completed(run, "failed"))
    await _commit_status(conn, run, "failed")
    log.info("pipeline.run_failed", run_id=run_id, failed_phase=failed_phase, error=error_message[:200])
    return True


async def cancel_run(conn: Conn, run_id: str) -> Row:
    """Cancel a pending or running run (409 when finished). The caller publishes the cancel
    message to workers after commit (``api.publish_cancel``)."""
    run = await store.lock_run(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    if run["status"] not in domain.ACTIVE_RUN_STATUSES:
        raise Conflict(
            f"pipeline run {run_id} is already {run['status']} and cannot be cancelled",
            {"id": run_id, "status": run["status"]},
        )
    await store.close_open_work(conn, run_id)
    run = await store.finish_run(conn, run_id, "cancelled", "cancelled by request")
    await _commit_status(conn, run, "cancelled")
    log.info("pipeline.run_cancelled", run_id=run_id)
    return run


# --- discovery ----------------------------------------------------------------------------------


async def store_discovery(
    conn: Conn, run_id: str, phases: list[PhasePlan], release_triggers: Any = None
) -> list[PhasePlan]:
    """Record what discovery found: phases -> tasks -> steps, ids assigned in the returned plan.

    Idempotent: when the run already has a tree (a redelivered discovery reply, or another
    orchestrator replica got there first) the stored tree is returned unchanged.
    """
    run = await store.lock_run(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    if run["discovered_at"] is not None or await store.has_phases(conn, run_id):
        return await load_plan(conn, run_id)
    _check_plan(phases)
    phase_rows: list[tuple[Any, ...]] = []
    task_rows: list[tuple[Any, ...]] = []
    step_rows: list[tuple[Any, ...]] = []
    for phase in phases:
        phase.id = phase.id or str(uuid.uuid4())
        phase_rows.append((phase.id, run_id, phase.name, phase.group_number, phase.timeout_seconds))
        for task in phase.tasks:
            task.id = task.id or str(uuid.uuid4())
            task_rows.append((task.id, run_id, phase.id, task.project_name, task.project_path))
            for position, step in enumerate(task.steps):
                step.id = step.id or str(uuid.uuid4())
                step.position = position
                step_rows.append(
                    (step.id, task.id, run_id, position, step.name, step.action, step.command, step.timeout_seconds)
                )
    if phase_rows:
        await store.insert_phases(conn, phase_rows)
    if task_rows:
        await store.insert_tasks(conn, task_rows)
    if step_rows:
        await store.insert_steps(conn, step_rows)
    await store.mark_discovered(conn, run_id, release_triggers)
    return phases


def _check_plan(phases: list[PhasePlan]) -> None:
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise InvalidRequest("discovery returned duplicate phase names", {"phases": names})
    for phase in phases:
        projects = [t.project_name for t in phase.tasks]
        if len(set(projects)) != len(projects):
            raise InvalidRequest(f"phase {phase.name} has duplicate projects", {"projects": projects})
        for task in phase.tasks:
            steps = [s.name for s in task.steps]
            if len(set(steps)) != len(steps):
                raise InvalidRequest(
                    f"project {task.project_name} has duplicate step names in phase {phase.name}", {"steps": steps}
                )


async def load_plan(conn: Conn, run_id: str) -> list[PhasePlan]:
    """The stored tree of a run with ids and current statuses (for an orchestrator resuming a run)."""
    cur = await conn.execute(
        """
        SELECT p.id::text AS phase_id, p.name AS phase_name, p.group_number, p.timeout_seconds AS phase_timeout,
               p.status::text AS phase_status,
               t.id::text AS task_id, t.project_name, t.project_path, t.status::text AS task_status,
               s.id::text AS step_id, s.name AS step_name, s.action, s.command, s.timeout_seconds AS step_timeout,
               s.position, s.status::text AS step_status
        FROM pipeline.phases p
        LEFT JOIN pipeline.tasks t ON t.phase_id = p.id
        LEFT JOIN pipeline.steps s ON s.task_id = t.id
        WHERE p.run_id = %s
        ORDER BY p.group_number, p.name, t.project_name, s.position
        """,
        (run_id,),
    )
    phases: dict[str, PhasePlan] = {}
    tasks: dict[str, TaskPlan] = {}
    for r in await cur.fetchall():
        phase = phases.get(r["phase_id"])
        if phase is None:
            phase = phases[r["phase_id"]] = PhasePlan(
                id=r["phase_id"],
                name=r["phase_name"],
                group_number=r["group_number"],
                timeout_seconds=r["phase_timeout"],
                status=r["phase_status"],
            )
        if r["task_id"] is None:
            continue
        task = tasks.get(r["task_id"])
        if task is None:
            task = tasks[r["task_id"]] = TaskPlan(
                id=r["task_id"], project_name=r["project_name"], project_path=r["project_path"], status=r["task_status"]
            )
            phase.tasks.append(task)
        if r["step_id"] is not None:
            task.steps.append(
                StepPlan(
                    id=r["step_id"],
                    name=r["step_name"],
                    action=r["action"],
                    command=r["command"],
                    timeout_seconds=r["step_timeout"],
                    position=r["position"],
                    status=r["step_status"],
                )
            )
    return list(phases.values())


# --- task and step status -----------------------------------------------------------------------


def task_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "run_id": row["run_id"],
        "status": row["status"],
        "error": row["error"],
        "started_at": _iso(row["started_at"]),
        "completed_at": _iso(row["completed_at"]),
    }


def step_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "task_id": row["task_id"],
        "run_id": row["run_id"],
        "status": row["status"],
        "exit_code": row["exit_code"],
        "logs_s3_key": row["logs_s3_key"],
        "started_at": _iso(row["started_at"]),
        "completed_at": _iso(row["completed_at"]),
    }


async def _lock_run_for_report(conn: Conn, run_id: str, new_status: str, what: str) -> Row:
    run = await store.lock_run(conn, run_id)
    assert run is not None  # the child row exists and the foreign key holds
    if new_status == "running" and run["status"] not in domain.ACTIVE_RUN_STATUSES:
        raise Conflict(
            f"pipeline run {run_id} is already {run['status']}; {what} cannot start",
            {"run_id": run_id, "run_status": run["status"]},
        )
    return run


async def _start_ancestors(conn: Conn, run_id: str, task: Row) -> None:
    await store.start_task_if_pending(conn, task["id"])
    await store.start_phase_if_pending(conn, task["phase_id"])
    await store.set_run_running(conn, run_id)


async def mark_step(
    conn: Conn,
    step_id: str,
    status: str,
    exit_code: int | None = None,
    logs_s3_key: str | None = None,
    *,
    internal: bool = True,
) -> Row:
    """Record a step's status (a worker report over HTTP uses ``internal=False``: only
    pending->running->success|failed). A step starting starts its task, phase and run."""
    run_id = await store.run_id_of_step(conn, step_id)
    if run_id is None:
        raise NotFound(f"step {step_id} not found", {"id": step_id})
    await _lock_run_for_report(conn, run_id, status, f"step {step_id}")
    step = await store.get_step(conn, step_id)
    assert step is not None
    if domain.step_transition(step_id, step["status"], status, internal) == "noop":
        if exit_code is not None or logs_s3_key is not None:
            step = await store.set_step_details(conn, step_id, exit_code, logs_s3_key)
        return step
    step = await store.update_step(conn, step_id, status, exit_code, logs_s3_key)
    if status == "running":
        task = await store.get_task(conn, step["task_id"])
        assert task is not None
        await _start_ancestors(conn, run_id, task)
    return step


async def mark_task(conn: Conn, task_id: str, status: str, error: str | None = None, *, internal: bool = True) -> Row:
    """Record a task's status and roll it up: a running task starts its phase and run; a
    finished task skips its steps that never ran, finishes its phase once every task of the
    phase finished, fails the run at the first failed task (fail fast) and completes the run
    once every phase succeeded."""
    run_id = await store.run_id_of_task(conn, task_id)
    if run_id is None:
        raise NotFound(f"task {task_id} not found", {"id": task_id})
    run = await _lock_run_for_report(conn, run_id, status, f"task {task_id}")
    task = await store.get_task(conn, task_id)
    assert task is not None
    if domain.task_transition(task_id, task["status"], status, internal) == "noop":
        return task
    task = await store.update_task(conn, task_id, status, error)
    if status == "running":
        await _start_ancestors(conn, run_id, task)
        return task
    await store.skip_pending_steps_of_task(conn, task_id)
    phase = await store.phase_of_task(conn, task_id)
    await _roll_up_finished_task(conn, run, task, status, phase)
    return task


async def _roll_up_finished_task(conn: Conn, run: Row, task: Row, status: str, phase: Row) -> None:
    """After a task finished (its row updated, its pending steps skipped; ``phase`` read after
    that, under the run lock): finish the phase once every task finished, fail the run at the
    first failed task, complete it once every phase succeeded."""
    run_id = run["id"]
    outcome = domain.phase_outcome(phase["task_statuses"])
    if outcome is not None and phase["status"] not in domain.FINISHED:
        await store.finish_phase(conn, phase["id"], outcome)
    if run["status"] not in domain.ACTIVE_RUN_STATUSES:
        return
    if status in ("failed", "cancelled"):
        message = f"task {task['project_name']} of phase {phase['name']} {status}"
        if task["error"]:
            message += f": {task['error']}"
        await fail_run(conn, run_id, message, phase["name"])
    elif outcome == "success" and run["discovered_at"] is not None:
        statuses = await store.phase_statuses(conn, run_id)
        if statuses and all(s in ("success", "skipped") for s in statuses) and "success" in statuses:
            await complete_run(conn, run_id)


async def report_task(
    conn: Conn,
    task_id: str,
    steps: Sequence[tuple[str, str, int | None, str | None]],
    status: str | None,
    error: str | None,
) -> tuple[Row | None, list[Row]]:
    """A worker's report of a task: each ``(step id, status, exit code, log key)`` in order,
    then the task's status, with exactly the rules and roll-ups of ``mark_step`` (a step still
    ``pending`` that reports its outcome goes through ``running``) and ``mark_task`` with
    ``internal=False``. Returns ``(task row or None, the step rows in report order)``.

    The same statements, fewer round trips: the run lock and the reads of the task and its
    steps go out together (each read starts after the lock is granted), the transitions are
    decided here from those rows (nothing else changes them while the lock is held), then all
    the writes and the phase read go out together. A phase or run roll-up, when one is due,
    follows as in ``mark_task``. The run lock is held for about two round trips instead of ~15.
    """
    async with conn.pipeline():
        run_cur = await store.lock_run_of_task(conn, task_id)
        task_cur = await store.task_with_phase_status(conn, task_id)
        steps_cur = await store.steps_of_task(conn, task_id)
    run = await run_cur.fetchone()
    task = await task_cur.fetchone()
    current = {row["id"]: row["status"] for row in await steps_cur.fetchall()}
    if run is None or task is None:
        if steps:
            sid = steps[0][0]
            raise InvalidRequest(f"step {sid} is not a step of task {task_id}", {"field": "steps", "id": sid})
        raise NotFound(f"task {task_id} not found", {"id": task_id})
    run_id = run["id"]
    active = run["status"] in domain.ACTIVE_RUN_STATUSES

    def check_start(what: str) -> None:
        if not active:
            raise Conflict(
                f"pipeline run {run_id} is already {run['status']}; {what} cannot start",
                {"run_id": run_id, "run_status": run["status"]},
            )

    # Decide every write from the locked state, in report order (mark_step's checks).
    task_status: str = task["status"]
    start_ancestors = False
    writes: list[tuple[str, str, str, int | None, str | None]] = []  # (kind, step id, status, exit, logs)
    for sid, new, exit_code, logs in steps:
        if sid not in current:
            raise InvalidRequest(f"step {sid} is not a step of task {task_id}", {"field": "steps", "id": sid})
        if new != "running" and current[sid] == "pending":
            check_start(f"step {sid}")
            domain.step_transition(sid, "pending", "running", False)
            writes.append(("start_finish", sid, new, exit_code, logs))
            start_ancestors = True
        else:
            if new == "running":
                check_start(f"step {sid}")
            if domain.step_transition(sid, current[sid], new, False) == "noop":
                kind = "details" if exit_code is not None or logs is not None else "read"
                writes.append((kind, sid, new, exit_code, logs))
                continue
            writes.append(("update", sid, new, exit_code, logs))
            start_ancestors = start_ancestors or new == "running"
        current[sid] = new
    start_task = start_ancestors and task_status == "pending"
    if start_task:
        task_status = "running"
    task_change: str | None = None  # "noop" | "apply"
    if status is not None:
        if status == "running":
            check_start(f"task {task_id}")
        task_change = domain.task_transition(task_id, task_status, status, False)
        start_ancestors = start_ancestors or (task_change == "apply" and status == "running")
    finished = task_change == "apply" and status in ("success", "failed", "cancelled")

    async with conn.pipeline():
        step_curs = []
        for kind, sid, new, exit_code, logs in writes:
            if kind == "read":
                step_curs.append(await store.send_get_step(conn, sid))
            elif kind == "details":
                step_curs.append(await store.send_step_details(conn, sid, exit_code, logs))
            else:
                step_curs.append(
                    await store.send_update_step(conn, sid, new, exit_code, logs, started=kind == "start_finish")
                )
        if start_task:
            await store.start_task_if_pending(conn, task_id)
        if start_ancestors:
            if task["phase_status"] == "pending":
                await store.start_phase_if_pending(conn, task["phase_id"])
            if run["status"] == "pending":
                await store.set_run_running(conn, run_id)
        out_cur: psycopg.AsyncCursor[Any] | None = None
        phase_cur: psycopg.AsyncCursor[Any] | None = None
        if status is not None:
            if task_change == "apply":
                out_cur = await store.send_update_task(conn, task_id, status, error)
            else:
                out_cur = await store.send_get_task(conn, task_id)
            if finished:
                if "pending" in current.values():
                    await store.skip_pending_steps_of_task(conn, task_id)
                phase_cur = await store.send_phase_of_task(conn, task_id)
    step_rows: list[Row] = []
    for cur in step_curs:
        row = await cur.fetchone()
        assert row is not None
        step_rows.append(row)
    task_row = await out_cur.fetchone() if out_cur is not None else None
    if finished:
        assert task_row is not None
        assert phase_cur is not None
        assert status is not None
        phase = await phase_cur.fetchone()
        assert phase is not None
        await _roll_up_finished_task(conn, run, task_row, status, phase)
    return task_row, step_rows
