"""Use cases of the pipeline service.

Two doors lead in. ``PipelineService`` is the HTTP side: each method opens one unit of work
(``store.UnitOfWork``), calls a use case below and, after commit, does what must follow it
(telling workers about a cancellation). The use cases themselves (``create_run``,
``report_task``, ``mark_step``, ``mark_task``, ``complete_run``, ``fail_run``, ``cancel_run``,
``store_discovery``) take the connection of a transaction their caller owns, so the in-process
dispatcher runs exactly the same code inside its own transactions. State, outbox events
(``store.record``) and commit statuses are written in that one transaction.

Every status change of a task or step goes through ``report_task``: it reads the locked state,
lets ``domain.apply_report`` decide, sends the writes, and rolls a finished task up into its
phase and run (``domain.roll_up``).

Locking: every change to a run's tree first locks the run row (``store.lock_run`` or
``store.read_for_report``); reports for one run therefore serialise, roll-ups see a consistent
tree, and there is a single lock order (run, then its children) so concurrent updates cannot
deadlock.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec
import psycopg
import structlog

from forge_common import batch
from forge_common.auth import Principal, require_repository
from forge_common.batch import BatchResult
from forge_common.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from forge_common.events import PipelineRunCreated, isoformat, isoformat_or_none
from forge_common.jobs import PlannedArtifact
from forge_common.repositories import RepositoryAllowList

from . import domain, metrics, store
from .domain import ListQuery, PhasePlan, StepReport, TaskReport
from .presign import Presigner
from .records import PhaseTally, Run, RunStatus, Step, Task, WorkStatus
from .schemas import (
    ArtifactView,
    PhaseView,
    RunDetail,
    RunList,
    RunSummary,
    StepStatusView,
    StepView,
    TaskReportResult,
    TaskStatusView,
    TaskView,
)
from .store import Conn, UnitOfWork

__all__ = [
    "CancelRuns",
    "CreateRun",
    "PipelineService",
    "TreeCache",
    "cancel_run",
    "complete_run",
    "create_run",
    "fail_run",
    "load_plan",
    "mark_step",
    "mark_task",
    "report_task",
    "store_discovery",
]

log = structlog.get_logger(__name__)
DEFAULT_MAX_ACTIVE_RUNS = 100
_encoder = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True)
class CreateRun:
    repository: str
    branch: str
    commit_sha: str
    trigger_type: str
    triggered_by: str
    # Stable identity of triggered_by: "sub:<token subject>" or "github:<numeric user id>".
    triggered_by_id: str | None = None
    idempotency_key: str | None = None
    tag: str | None = None
    pull_request_number: int | None = None


def _fingerprint(cmd: CreateRun) -> str:
    text = f"{cmd.repository.lower()}\n{cmd.branch}\n{cmd.commit_sha}\n{cmd.trigger_type}"
    return hashlib.sha256(text.encode()).hexdigest()


async def _commit_status(conn: Conn, run: Run, run_status: str) -> None:
    state, description = domain.commit_state_for(run_status)
    await store.add_commit_status(conn, run.id, run.repository, run.commit_sha, state, description)


# --- runs ---------------------------------------------------------------------------------------


def _validated(cmd: CreateRun) -> CreateRun:
    domain.validate_repository(cmd.repository)
    domain.validate_branch(cmd.branch)
    commit_sha = domain.normalize_commit_sha(cmd.commit_sha)
    domain.validate_identity(cmd.triggered_by)
    if cmd.trigger_type not in ("push", "pull_request", "manual"):
        raise InvalidRequest("trigger_type must be one of push, pull_request, manual", {"field": "trigger_type"})
    domain.validate_idempotency_key(cmd.idempotency_key)
    return dataclasses.replace(cmd, commit_sha=commit_sha)


async def create_run(conn: Conn, cmd: CreateRun, max_active: int = DEFAULT_MAX_ACTIVE_RUNS) -> tuple[Run, bool]:
    """Store a pending run and its ``pipeline.run.created`` event. Returns ``(run, created)``;
    ``created`` is False when an Idempotency-Key retry returns the run made the first time."""
    cmd = _validated(cmd)
    fingerprint = _fingerprint(cmd)
    # One creation at a time per repository: the active-run count and the duplicate check
    # below cannot be raced past (150 concurrent creates leave exactly 100 runs).
    by_key, existing, active, spelling = await store.creation_checks(
        conn, cmd.repository, cmd.commit_sha, cmd.triggered_by, cmd.idempotency_key
    )
    if by_key is not None:
        if by_key.request_fingerprint != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used for a different request",
                {"existing_id": by_key.id, "idempotency_key": cmd.idempotency_key},
            )
        return by_key, False
    if existing is not None:
        raise Conflict(
            f"a run already exists for {existing.repository} at {existing.commit_sha}",
            {"existing_id": existing.id, "repository": existing.repository, "commit_sha": existing.commit_sha},
        )
    if active >= max_active:
        raise LimitExceeded(
            f"{cmd.repository} already has {active} pending or running runs (limit {max_active})",
            {"repository": cmd.repository, "limit": max_active, "active": active},
        )
    # Names are case-insensitive and shown as first given.
    run = await _insert_run(conn, dataclasses.replace(cmd, repository=spelling), fingerprint)
    log.info("pipeline.run_created", run_id=run.id, repository=cmd.repository, commit_sha=cmd.commit_sha)
    return run, True


async def _insert_run(conn: Conn, cmd: CreateRun, fingerprint: str) -> Run:
    """Run, event and commit status: one round trip."""
    run_id = str(uuid.uuid4())
    state, description = domain.commit_state_for("pending")
    async with conn.pipeline():
        cur = await store.insert_run(
            conn,
            run_id=run_id,
            repository=cmd.repository,
            branch=cmd.branch,
            commit_sha=cmd.commit_sha,
            triggered_by=cmd.triggered_by,
            triggered_by_id=cmd.triggered_by_id,
            trigger_type=cmd.trigger_type,
            tag=cmd.tag,
            pull_request_number=cmd.pull_request_number,
            idempotency_key=cmd.idempotency_key,
            request_fingerprint=fingerprint,
        )
        await store.record(
            conn,
            PipelineRunCreated(
                run_id=run_id,
                repository=cmd.repository,
                branch=cmd.branch,
                commit_sha=cmd.commit_sha,
                triggered_by=cmd.triggered_by,
            ),
        )
        await store.add_commit_status(conn, run_id, cmd.repository, cmd.commit_sha, state, description)
    run = await cur.fetchone()
    assert run is not None
    return run


async def _lock_active_run(conn: Conn, run_id: str) -> Run | None:
    """The locked run if it is still pending or running, else ``None``."""
    run = await store.lock_run(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    return run if run.status in domain.ACTIVE_RUN_STATUSES else None


async def _finish_run(
    conn: Conn, run: Run, status: RunStatus, error: str | None = None, failed_phase: str | None = None
) -> Run:
    """Finish a locked active run: its row, its events, its commit status."""
    domain.run_transition(run.id, run.status, status)
    finished = await store.finish_run(conn, run.id, status, error, failed_phase)
    for event in domain.run_finished_events(finished):
        await store.record(conn, event)
    await _commit_status(conn, finished, status)
    metrics.run_finished(conn, finished)
    return finished


async def complete_run(conn: Conn, run_id: str) -> bool:
    """Mark an active run ``success`` (event ``pipeline.run.completed``). False when the run was
    already finished (idempotent: a second call emits nothing)."""
    run = await _lock_active_run(conn, run_id)
    if run is None:
        return False
    await _finish_run(conn, run, "success")
    log.info("pipeline.run_succeeded", run_id=run_id)
    return True


async def fail_run(conn: Conn, run_id: str, error_message: str, failed_phase: str | None = None) -> bool:
    """Mark an active run ``failed``: what never started becomes ``skipped``, running work may
    still report; events ``pipeline.run.failed`` and ``pipeline.run.completed``. False (and
    nothing emitted) when the run was already finished."""
    run = await _lock_active_run(conn, run_id)
    if run is None:
        return False
    await store.skip_pending_work(conn, run_id)
    await _finish_run(conn, run, "failed", error_message, failed_phase)
    log.info("pipeline.run_failed", run_id=run_id, failed_phase=failed_phase, error=error_message[:200])
    return True


def _cancellable(run_id: str, run: Run | None, principal: Principal | None = None) -> Run:
    """The run, when a cancellation may proceed; else the 404 / 409 a cancellation answers. A
    repository-bound ``principal`` may only cancel its repository's runs (403)."""
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    if principal is not None:
        require_repository(principal, run.repository)
    if run.status not in domain.ACTIVE_RUN_STATUSES:
        raise Conflict(
            f"pipeline run {run_id} is already {run.status} and cannot be cancelled",
            {"id": run_id, "status": run.status},
        )
    return run


async def cancel_run(conn: Conn, run_id: str, principal: Principal | None = None) -> Run:
    """Cancel a pending or running run (409 when finished). Workers are told after commit
    (``PipelineService.cancel_run``)."""
    run = _cancellable(run_id, await store.lock_run(conn, run_id), principal)
    await store.close_open_work(conn, run_id)
    run = await _finish_run(conn, run, "cancelled", "cancelled by request")
    log.info("pipeline.run_cancelled", run_id=run_id)
    return run


# --- discovery ----------------------------------------------------------------------------------


async def store_discovery(
    conn: Conn,
    run_id: str,
    phases: list[PhasePlan],
    release_triggers: object = None,
    artifacts: list[PlannedArtifact] | None = None,
    commit_sha: str | None = None,
) -> list[PhasePlan]:
    """Record what discovery found: phases -> tasks -> steps, ids assigned in the returned plan,
    the projects' artifacts as a last phase, ``artifacts`` (``domain.artifacts_phase``), and the
    full ``commit_sha`` the run's (possibly abbreviated) SHA resolved to. Raises ``Conflict`` when
    another run of the repository already builds that full SHA.

    Idempotent: when the run already has a tree (a redelivered discovery reply, or another
    orchestrator replica got there first) the stored tree is returned unchanged.
    """
    run = await store.lock_run(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})
    if run.discovered_at is not None or await store.has_phases(conn, run_id):
        return await store.load_plan(conn, run_id)
    if commit_sha is not None and commit_sha != run.commit_sha:
        # The run was created with an abbreviated SHA: from now on it names the full one.
        full = domain.normalize_commit_sha(commit_sha, "commit_sha")
        other = await store.set_full_commit(conn, run_id, full)
        if other is not None:
            raise Conflict(
                f"commit {run.commit_sha} of {run.repository} is {full}, which run {other} already builds",
                {"existing_id": other, "commit_sha": full},
            )
    building = domain.artifacts_phase(phases, artifacts or [])
    if building is not None:
        phases = [*phases, building]
    domain.check_plan(phases)
    await store.insert_plan(conn, run_id, phases)
    if building is not None:
        await store.insert_artifacts(conn, run_id, building, artifacts or [])
    await store.mark_discovered(conn, run_id, release_triggers)
    return phases


async def load_plan(conn: Conn, run_id: str) -> list[PhasePlan]:
    """The stored tree of a run with ids and current statuses (for an orchestrator resuming a run)."""
    return await store.load_plan(conn, run_id)


# --- task and step status -----------------------------------------------------------------------


async def report_task(conn: Conn, report: TaskReport) -> tuple[Task | None, list[Step]]:
    """Apply a report of one task: its steps' statuses in order, then its own status. Returns
    the task (``None`` when the report had no task status) and the reported steps in order.

    Two round trips under the run lock (``store.read_for_report``, then ``store.write_report``)
    whatever the number of steps, plus the roll-up when the task finished.
    """
    snapshot = await store.read_for_report(conn, report.task_id)
    if snapshot is None:
        if report.steps:
            sid = report.steps[0].id
            raise InvalidRequest(f"step {sid} is not a step of task {report.task_id}", {"field": "steps", "id": sid})
        raise NotFound(f"task {report.task_id} not found", {"id": report.task_id})
    writes = domain.apply_report(snapshot, report)
    task, steps, phase = await store.write_report(conn, snapshot, writes, report.error)
    if phase is not None:
        assert task is not None
        await _roll_up(conn, snapshot.run, task, phase)
    return task, steps


async def _roll_up(conn: Conn, run: Run, task: Task, phase: PhaseTally) -> None:
    decision = domain.roll_up(run.status, run.discovered_at is not None, task, phase)
    if decision.finish_phase is not None:
        name, seconds = await store.finish_phase(conn, phase.id, decision.finish_phase)
        metrics.phase_finished(conn, name, decision.finish_phase, seconds)
    if decision.fail_run is not None:
        await fail_run(conn, run.id, decision.fail_run, decision.failed_phase)
    elif decision.check_run_success and domain.run_succeeded(await store.phase_statuses(conn, run.id)):
        await complete_run(conn, run.id)


async def mark_step(
    conn: Conn,
    step_id: str,
    status: WorkStatus,
    exit_code: int | None = None,
    logs_s3_key: str | None = None,
    *,
    internal: bool = True,
) -> Step:
    """``report_task`` for one step (a worker's report over HTTP uses ``internal=False``)."""
    task_id = await store.task_of_step(conn, step_id)
    if task_id is None:
        raise NotFound(f"step {step_id} not found", {"id": step_id})
    step = StepReport(id=step_id, status=status, exit_code=exit_code, logs_s3_key=logs_s3_key)
    _, steps = await report_task(conn, TaskReport(task_id=task_id, steps=(step,), internal=internal))
    return steps[0]


async def mark_task(
    conn: Conn, task_id: str, status: WorkStatus, error: str | None = None, *, internal: bool = True
) -> Task:
    """``report_task`` for a task's own status (a worker's report over HTTP uses ``internal=False``)."""
    task, _ = await report_task(conn, TaskReport(task_id=task_id, status=status, error=error, internal=internal))
    assert task is not None
    return task


# --- the run tree ---------------------------------------------------------------------------------


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


def _artifact_views(rows: list[store.ArtifactTuple]) -> list[ArtifactView]:
    views = []
    for name, project, kind, status, digest, size, tracking, published, error in rows:
        views.append(
            ArtifactView(
                name=name,
                project=project,
                type=kind,
                status=status,
                digest=digest,
                size=size,
                tracking_oci_uri=tracking,
                primary_published_uri=(published[0] if published else tracking),
                published_uris=published,
                error=error,
            )
        )
    return views


def _run_detail(
    run: Run,
    phase_rows: list[store.PhaseTuple],
    tasks_by_phase: dict[str, list[TaskView]],
    artifact_rows: list[store.ArtifactTuple],
) -> RunDetail:
    phases = [
        PhaseView(
            id=pid,
            name=name,
            group_number=group,
            status=status,
            started_at=isoformat(started) if started is not None else None,
            completed_at=isoformat(completed) if completed is not None else None,
            tasks=tasks_by_phase.get(pid, []),
        )
        for pid, name, group, status, started, completed in phase_rows
    ]
    return RunDetail(
        id=run.id,
        repository=run.repository,
        branch=run.branch,
        commit_sha=run.commit_sha,
        status=run.status,
        triggered_by=run.triggered_by,
        trigger_type=run.trigger_type,
        started_at=isoformat(run.started_at),
        completed_at=isoformat(run.completed_at) if run.completed_at is not None else None,
        # Beyond the spec: why a run failed (discovery/validation message, timeout, dead letter).
        error=run.error,
        failed_phase=run.failed_phase,
        release_error=run.release_error,
        phases=phases,
        artifacts=_artifact_views(artifact_rows),
    )


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
    run, phase_rows, task_rows, step_rows, artifact_rows = await store.tree_rows(conn, run_id)
    if run is None:
        raise NotFound(f"pipeline run {run_id} not found", {"id": run_id})

    # Plain tuples in, Structs out: this loop runs 1,000 times for the largest trees.
    steps_by_task: dict[str, list[tuple[int, StepView]]] = {}
    for task_id, position, sid, name, status, exit_code, logs_key, started, completed in step_rows:
        step = StepView(
            id=sid,
            name=name,
            status=status,
            exit_code=exit_code,
            started_at=isoformat_or_none(started),
            completed_at=isoformat_or_none(completed),
        )
        if logs_key and signer is not None:
            step.logs_url = signer.url(logs_key)
        bucket = steps_by_task.get(task_id)
        if bucket is None:
            steps_by_task[task_id] = [(position, step)]
        else:
            bucket.append((position, step))

    tasks_by_phase: dict[str, list[TaskView]] = {}
    for tid, phase_id, project, status, started, completed in task_rows:
        ordered = sorted(steps_by_task.get(tid, ()), key=_first)
        task = TaskView(
            id=tid,
            project_name=project,
            status=status,
            started_at=isoformat_or_none(started),
            completed_at=isoformat_or_none(completed),
            steps=[s for _, s in ordered],
        )
        tasks_by_phase.setdefault(phase_id, []).append(task)

    encoded = _encoder.encode(_run_detail(run, phase_rows, tasks_by_phase, artifact_rows))
    if cache is not None:
        # Under the version read with the tree: the tree rows are at least that new.
        cache.put(run_id, run.tree_version, window, encoded)
    return encoded


def _first(item: tuple[int, StepView]) -> int:
    return item[0]


# --- the HTTP side: one unit of work per request --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CancelRuns:
    """Which runs ``POST /v1/runs/cancel`` cancels: ``ids``, or a repository's active runs
    (optionally one branch, one active status). Validated by ``domain.validate_cancel_filter``."""

    ids: list[str] | None = None
    repository: str | None = None
    branch: str | None = None
    status: str | None = None
    dry_run: bool = False
    # A repository-bound (workload) caller may only cancel its repository's runs.
    principal: Principal | None = None


CancelPublisher = Callable[[str], Awaitable[None]]


class PipelineService:
    """What the HTTP routes call (ids already parsed, bodies decoded). Built once in
    ``app.create_app`` with everything it needs."""

    def __init__(
        self,
        uow: UnitOfWork,
        *,
        max_active_runs: int,
        presigner: Presigner | None,
        logs_url_ttl: int,
        publish_cancel: CancelPublisher,
        tree_cache: TreeCache | None = None,
        repositories: RepositoryAllowList | None = None,
    ) -> None:
        self.uow = uow
        self.repositories = repositories or RepositoryAllowList()
        self.max_active_runs = max_active_runs
        self.presigner = presigner
        self.logs_url_ttl = logs_url_ttl
        self.publish_cancel = publish_cancel
        self.tree_cache = tree_cache if tree_cache is not None else TreeCache()

    async def create_run(self, cmd: CreateRun) -> tuple[Run, bool]:
        """``create_run`` in a transaction of its own. A unique violation can only come from a
        concurrent request racing for the same Idempotency-Key in another repository (runs of
        one repository are created one at a time); the retry then finds the winner's run."""
        self.repositories.check(_validated(cmd).repository)
        for attempt in range(2):
            try:
                async with self.uow.begin() as conn:
                    return await create_run(conn, cmd, self.max_active_runs)
            except psycopg.errors.UniqueViolation:
                if attempt == 1:
                    raise Conflict("a conflicting run was created concurrently; retry the request") from None
        raise AssertionError("unreachable")

    async def list_runs(self, query: ListQuery) -> RunList:
        async with self.uow.begin() as conn:
            rows, total = await store.list_runs(conn, query)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        runs = [
            RunSummary(
                id=r.id,
                repository=r.repository,
                commit_sha=r.commit_sha,
                status=r.status,
                started_at=isoformat(r.started_at),
            )
            for r in rows
        ]
        cursor = domain.next_cursor(query, rows[-1].created_at, rows[-1].id) if more else None
        return RunList(runs=runs, total=total, limit=query.limit, offset=query.offset, next_cursor=cursor)

    async def tree_in(self, conn: Conn, run_id: str) -> bytes:
        """The run's tree read on the caller's connection (its snapshot: live.snapshot)."""
        return await run_tree_json(conn, run_id, self.presigner, self.logs_url_ttl, self.tree_cache)

    async def run_tree(self, run_id: str) -> bytes:
        async with self.uow.begin() as conn:
            return await run_tree_json(conn, run_id, self.presigner, self.logs_url_ttl, self.tree_cache)

    async def cancel_run(self, run_id: str, principal: Principal | None = None) -> None:
        async with self.uow.begin() as conn:
            await cancel_run(conn, run_id, principal)
        await self.publish_cancel(run_id)

    async def cancel_runs(self, cmd: CancelRuns) -> BatchResult:
        """``POST /v1/runs/cancel``: each run cancelled as ``DELETE /v1/runs/{id}`` would, in a
        transaction of its own; a dry run answers what each cancellation would answer now."""
        if cmd.ids is not None:
            ids = cmd.ids
            batch.check_size(len(ids), "ids")
        else:
            assert cmd.repository is not None
            if cmd.principal is not None:
                require_repository(cmd.principal, cmd.repository)
            async with self.uow.begin() as conn:
                ids = await store.active_run_ids(
                    conn, cmd.repository, cmd.branch, cmd.status, batch.MAX_BATCH_ITEMS + 1
                )
            if len(ids) > batch.MAX_BATCH_ITEMS:
                raise InvalidRequest(
                    f"more than {batch.MAX_BATCH_ITEMS} runs match the filter; narrow it (branch, status) "
                    "or cancel in several requests",
                    {"field": "repository", "limit": batch.MAX_BATCH_ITEMS},
                )
        results = []
        for raw_id in ids:
            operation = self._would_cancel if cmd.dry_run else self._cancel_one
            results.append(await batch.apply(raw_id, 204, functools.partial(operation, raw_id, cmd.principal)))
        return batch.summarize(results, dry_run=cmd.dry_run)

    async def _cancel_one(self, raw_id: str, principal: Principal | None) -> None:
        await self.cancel_run(domain.parse_uuid(raw_id, "run"), principal)

    async def _would_cancel(self, raw_id: str, principal: Principal | None) -> None:
        run_id = domain.parse_uuid(raw_id, "run")
        async with self.uow.begin() as conn:
            _cancellable(run_id, await store.get_run(conn, run_id), principal)

    async def task_status(self, task_id: str, status: WorkStatus, error: str | None) -> TaskStatusView:
        async with self.uow.begin() as conn:
            task = await mark_task(conn, task_id, status, error, internal=False)
        return TaskStatusView.of(task)

    async def step_status(self, report: StepReport) -> StepStatusView:
        async with self.uow.begin() as conn:
            task_id = await store.task_of_step(conn, report.id)
            if task_id is None:
                raise NotFound(f"step {report.id} not found", {"id": report.id})
            _, steps = await report_task(conn, TaskReport(task_id=task_id, steps=(report,), internal=False))
        return StepStatusView.of(steps[0])

    async def report(self, report: TaskReport) -> TaskReportResult:
        async with self.uow.begin() as conn:
            task, steps = await report_task(conn, report)
        return TaskReportResult(
            task=TaskStatusView.of(task) if task is not None else None,
            steps=[StepStatusView.of(step) for step in steps],
        )
