"""Pure rules of the pipeline domain: input validation, legal status transitions, roll-ups.

Nothing here does I/O. ``service.py`` asks these functions what should happen and ``store.py``
makes it so inside the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from typing import Literal

import msgspec

from forge_common import cursor
from forge_common.errors import Conflict, InvalidRequest
from forge_common.events import EventData, PipelineRunCompleted, PipelineRunFailed
from forge_common.http import parse_page
from forge_common.jobs import PlannedArtifact

from .records import PhaseStatus, PhaseTally, Run, RunStatus, Task, TaskInPhase, WorkStatus

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "ARTIFACTS_PHASE",
    "FINISHED",
    "ListFilters",
    "ListQuery",
    "PhasePlan",
    "ReportWrites",
    "RollUp",
    "Snapshot",
    "StepPlan",
    "StepReport",
    "StepWrite",
    "TaskPlan",
    "TaskReport",
    "Transition",
    "apply_report",
    "artifacts_phase",
    "check_plan",
    "commit_state_for",
    "next_cursor",
    "normalize_commit_sha",
    "parse_timestamp",
    "parse_uuid",
    "phase_outcome",
    "phase_transition",
    "roll_up",
    "run_finished_events",
    "run_succeeded",
    "run_transition",
    "step_transition",
    "task_transition",
    "validate_branch",
    "validate_idempotency_key",
    "validate_identity",
    "validate_list_query",
    "validate_repository",
    "validate_tag",
]

ACTIVE_RUN_STATUSES = ("pending", "running")
# The phase that builds a run's [[artifacts]], after every CI phase (discovery reserves the name).
ARTIFACTS_PHASE = "artifacts"
FINISHED = frozenset({"success", "failed", "skipped", "cancelled"})

# GitHub's rules: owner 1-39 alphanumerics or single hyphens; repository name 1-100 of [A-Za-z0-9._-].
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


def _invalid(field: str, message: str, value: object = None) -> InvalidRequest:
    details: dict[str, object] = {"field": field}
    if value is not None:
        details["value"] = value if not isinstance(value, str) or len(value) <= 300 else value[:300] + "..."
    return InvalidRequest(message, details)


def parse_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(f"{what} id must be a UUID", {"field": "id", "value": str(value)[:100]}) from None


def validate_repository(value: str, field: str = "repository") -> str:
    owner, sep, name = value.partition("/")
    if not sep or not _OWNER.match(owner) or not _NAME.match(name) or name in (".", ".."):
        raise _invalid(field, f"{field} must be 'owner/name' (GitHub owner and repository name)", value)
    return value


def _validate_ref_name(value: str, field: str, what: str) -> str:
    problem = None
    if not value:
        problem = "must not be empty"
    elif len(value) > 255:
        problem = "must be at most 255 characters"
    elif _BAD_REF_CHARS.search(value):
        problem = "must not contain spaces, control characters or any of ~^:?*[\\"
    elif ".." in value or "@{" in value or "//" in value:
        problem = "must not contain '..', '@{' or '//'"
    elif value.startswith(("-", "/", ".")) or value.endswith(("/", ".", ".lock")):
        problem = "must not start with '-', '/' or '.', nor end with '/', '.' or '.lock'"
    elif value == "@":
        problem = "must not be '@'"
    if problem:
        raise _invalid(field, f"{field} is not a valid git {what} name: it {problem}", value)
    return value


def validate_branch(value: str, field: str = "branch") -> str:
    return _validate_ref_name(value, field, "branch")


def validate_tag(value: str, field: str = "tag") -> str:
    return _validate_ref_name(value, field, "tag")


def normalize_commit_sha(value: str, field: str = "commit_sha") -> str:
    if not _SHA.match(value):
        raise _invalid(field, f"{field} must be 7 to 64 hexadecimal characters", value)
    return value.lower()


def validate_identity(value: str, field: str = "triggered_by") -> str:
    if not value.strip() or len(value) > 255 or any(ord(c) < 0x20 for c in value):
        raise _invalid(field, f"{field} must be 1 to 255 printable characters", value)
    return value


def validate_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not (1 <= len(value) <= 255) or not _PRINTABLE.match(value):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
            {"header": "Idempotency-Key"},
        )
    return value


RUN_STATUSES = ("pending", "running", "success", "failed", "cancelled")


class ListQuery(msgspec.Struct, kw_only=True):
    repository: str
    branch: str | None
    status: str | None
    limit: int
    offset: int
    triggered_by: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    # Keyset position from an opaque cursor: the (created_at, id) of the last run already seen.
    after: tuple[dt.datetime, str] | None = None

    def cursor_scope(self) -> str:
        """What a cursor of this list is bound to: the list and every filter."""
        return cursor.fingerprint(
            "runs",
            repository=self.repository,
            branch=self.branch,
            status=self.status,
            triggered_by=self.triggered_by,
            created_after=self.created_after,
            created_before=self.created_before,
        )


def parse_timestamp(value: str, field: str) -> dt.datetime:
    """An RFC 3339 timestamp with an explicit offset (``Z`` or ``+hh:mm``), as UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (ValueError, TypeError):
        raise _invalid(field, f"{field} must be an RFC 3339 timestamp such as 2026-11-25T19:00:00Z", value) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _invalid(field, f"{field} must carry a UTC offset (e.g. a trailing Z)", value)
    return parsed.astimezone(dt.UTC)


class ListFilters(msgspec.Struct, kw_only=True):
    """``GET /v1/runs`` query parameters as received (all strings, validated here)."""

    repository: str | None = None
    branch: str | None = None
    status: str | None = None
    triggered_by: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    cursor: str | None = None
    limit: str | None = None
    offset: str | None = None


def validate_list_query(filters: ListFilters) -> ListQuery:
    repository = filters.repository
    if repository is None or repository == "":
        raise _invalid("repository", "query parameter 'repository' is required")
    validate_repository(repository)
    if filters.branch is not None:
        validate_branch(filters.branch)
    status = filters.status
    if status is not None and status not in RUN_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(RUN_STATUSES)}", {"field": "status", "value": status})
    if filters.triggered_by is not None:
        validate_identity(filters.triggered_by)
    after = parse_timestamp(filters.created_after, "created_after") if filters.created_after is not None else None
    before = parse_timestamp(filters.created_before, "created_before") if filters.created_before is not None else None
    page = parse_page(filters.limit, filters.offset)
    query = ListQuery(
        repository=repository,
        branch=filters.branch,
        status=status,
        limit=page.limit,
        offset=page.offset,
        triggered_by=filters.triggered_by,
        created_after=after,
        created_before=before,
    )
    if filters.cursor is not None:
        if page.offset:
            raise _invalid("cursor", "cursor and offset cannot be combined: the cursor already says where to go on")
        key = cursor.decode(filters.cursor, query.cursor_scope())
        try:
            query.after = (dt.datetime.fromisoformat(str(key[0])), str(uuid.UUID(str(key[1]))))
        except (ValueError, IndexError, TypeError):
            raise _invalid("cursor", "cursor is not a cursor this API returned") from None
    return query


def next_cursor(query: ListQuery, created_at: dt.datetime, run_id: str) -> str:
    return cursor.encode(query.cursor_scope(), [created_at.isoformat(), run_id])


# --- the state machine of runs, phases, tasks and steps -------------------------------------------

Transition = Literal["apply", "noop"]

# Runs: started by their first running task or step; finished by the roll-ups below, by the
# orchestrator (discovery failure, timeout, dead letter) or by a cancel request.
_RUN: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "success", "failed", "cancelled"}),
    "running": frozenset({"success", "failed", "cancelled"}),
}
# Phases: started with their first task, finished when all their tasks are; skipped when the
# run ends before them. A phase without tasks succeeds without running.
_PHASE: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "success", "failed", "skipped"}),
    "running": frozenset({"success", "failed", "skipped"}),
}
# Tasks and steps, as a worker may report them over HTTP: pending -> running -> success | failed.
_REPORTED: dict[str, frozenset[str]] = {
    "pending": frozenset({"running"}),
    "running": frozenset({"success", "failed"}),
}
# What the orchestrator may decide in-process on top of that (timeouts, fail-fast, cancellation).
_INTERNAL: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "failed", "skipped", "cancelled"}),
    "running": frozenset({"success", "failed", "cancelled"}),
}


def _transition(
    kind: str, entity_id: str, current: str, new: str, allowed_from: dict[str, frozenset[str]]
) -> Transition:
    if current == new:
        # A retried report (the worker timed out waiting for our answer) changes nothing.
        return "noop"
    if new not in allowed_from.get(current, frozenset()):
        raise Conflict(
            f"{kind} {entity_id} cannot go from {current} to {new}",
            {"id": entity_id, "current_status": current, "requested_status": new},
        )
    return "apply"


def run_transition(run_id: str, current: str, new: str) -> Transition:
    return _transition("pipeline run", run_id, current, new, _RUN)


def phase_transition(phase_id: str, current: str, new: str) -> Transition:
    return _transition("phase", phase_id, current, new, _PHASE)


def task_transition(task_id: str, current: str, new: str, internal: bool = False) -> Transition:
    return _transition("task", task_id, current, new, _INTERNAL if internal else _REPORTED)


def step_transition(step_id: str, current: str, new: str, internal: bool = False) -> Transition:
    return _transition("step", step_id, current, new, _INTERNAL if internal else _REPORTED)


def phase_outcome(task_statuses: Sequence[str]) -> PhaseStatus | None:
    """The phase's final status once every task finished, else ``None``."""
    if any(s not in FINISHED for s in task_statuses):
        return None
    if any(s in ("failed", "cancelled") for s in task_statuses):
        return "failed"
    return "success"


def run_succeeded(phase_statuses: Sequence[str]) -> bool:
    """Every phase of a discovered run done, at least one of them run (not all skipped)."""
    return (
        bool(phase_statuses)
        and all(s in ("success", "skipped") for s in phase_statuses)
        and ("success" in phase_statuses)
    )


class StepReport(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: WorkStatus
    exit_code: int | None = None
    logs_s3_key: str | None = None
    # The worker's clock: when the step really started / ended (the store keeps them within
    # [the task's first dispatch, the report's arrival]); None: the report's arrival.
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None


class TaskReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker (or the orchestrator, ``internal``) says about one task: its steps' news
    in order, then, optionally, the task's own status."""

    task_id: str
    steps: tuple[StepReport, ...] = ()
    status: WorkStatus | None = None
    error: str | None = None
    # The orchestrator's wider rules (timeouts, fail fast) instead of a worker's.
    internal: bool = False
    # A pending step that reports its outcome goes through running first (the batched report:
    # the step finished before its running report was due, and gets both timestamps).
    through_running: bool = False


class Snapshot(msgspec.Struct, kw_only=True):
    """The state a report is decided on, read under the run lock."""

    run: Run
    task: TaskInPhase
    steps: dict[str, WorkStatus]


StepChange = Literal["read", "details", "update", "start_and_update"]


class StepWrite(msgspec.Struct, frozen=True, kw_only=True):
    change: StepChange
    id: str
    status: WorkStatus
    exit_code: int | None
    logs_s3_key: str | None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None


class ReportWrites(msgspec.Struct, kw_only=True):
    """What ``apply_report`` decided; ``store.write_report`` sends it in one round trip."""

    steps: list[StepWrite]
    start_task: bool = False
    start_phase: bool = False
    start_run: bool = False
    task: Literal["update", "read"] | None = None
    task_status: WorkStatus | None = None
    # The task finished: its steps that never ran are skipped, its phase is read to roll up.
    task_finished: bool = False
    skip_pending_steps: bool = False
    # The worker's times the task's (and its phase's, its run's) start and the task's end are
    # taken from: the earliest start of a step started by this report, the latest end reported.
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None


def _refuse_start(snapshot: Snapshot, what: str) -> None:
    run = snapshot.run
    if run.status not in ACTIVE_RUN_STATUSES:
        raise Conflict(
            f"pipeline run {run.id} is already {run.status}; {what} cannot start",
            {"run_id": run.id, "run_status": run.status},
        )


def _step_change(snapshot: Snapshot, report: TaskReport, step: StepReport, current: WorkStatus) -> StepChange:
    if report.through_running and step.status != "running" and current == "pending":
        _refuse_start(snapshot, f"step {step.id}")
        step_transition(step.id, "pending", "running", report.internal)
        return "start_and_update"
    if step.status == "running":
        _refuse_start(snapshot, f"step {step.id}")
    if step_transition(step.id, current, step.status, report.internal) == "noop":
        # A repeated report may still carry the exit code or log key the first one lacked.
        return "details" if step.exit_code is not None or step.logs_s3_key is not None else "read"
    return "update"


def apply_report(snapshot: Snapshot, report: TaskReport) -> ReportWrites:
    """The one state machine of tasks and steps: every report (one step, one task status, or a
    worker's batch) is decided here, in order, from the locked state. Raises ``Conflict`` for
    a transition the rules refuse and ``InvalidRequest`` for a step of another task; either
    way nothing is written. Starting a step or task starts its task, phase and run."""
    steps = dict(snapshot.steps)
    writes: list[StepWrite] = []
    started = False
    first_start: dt.datetime | None = None
    last_end: dt.datetime | None = None
    for step in report.steps:
        current = steps.get(step.id)
        if current is None:
            raise InvalidRequest(
                f"step {step.id} is not a step of task {report.task_id}", {"field": "steps", "id": step.id}
            )
        change = _step_change(snapshot, report, step, current)
        writes.append(
            StepWrite(
                change=change,
                id=step.id,
                status=step.status,
                exit_code=step.exit_code,
                logs_s3_key=step.logs_s3_key,
                started_at=step.started_at,
                completed_at=step.completed_at,
            )
        )
        starts = change == "start_and_update" or (change == "update" and step.status == "running")
        if starts and step.started_at is not None:
            first_start = min(first_start or step.started_at, step.started_at)
        if step.completed_at is not None:
            last_end = max(last_end or step.completed_at, step.completed_at)
        started = started or starts
        steps[step.id] = step.status
    task_status: WorkStatus = snapshot.task.status
    start_task = started and task_status == "pending"
    if start_task:
        task_status = "running"
    out = ReportWrites(steps=writes, start_task=start_task, started_at=first_start, completed_at=last_end)
    if report.status is not None:
        if report.status == "running":
            _refuse_start(snapshot, f"task {report.task_id}")
        applied = task_transition(report.task_id, task_status, report.status, report.internal) == "apply"
        out.task = "update" if applied else "read"
        out.task_status = report.status
        started = started or (applied and report.status == "running")
        out.task_finished = applied and report.status in FINISHED
        out.skip_pending_steps = out.task_finished and "pending" in steps.values()
    out.start_phase = started and snapshot.task.phase_status == "pending"
    out.start_run = started and snapshot.run.status == "pending"
    return out


class RollUp(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished task means for its phase and its run."""

    finish_phase: PhaseStatus | None = None
    fail_run: str | None = None  # the run's error message: fail fast at the first failed task
    failed_phase: str | None = None
    # The phase succeeded: the run succeeds if every other phase is done too (read them).
    check_run_success: bool = False


def roll_up(run_status: RunStatus, discovered: bool, task: Task, phase: PhaseTally) -> RollUp:
    """Decide the roll-up of ``task`` (just finished) from its phase as it is now."""
    outcome = phase_outcome(phase.task_statuses)
    finish = outcome if outcome is not None and phase.status not in FINISHED else None
    if run_status not in ACTIVE_RUN_STATUSES:
        return RollUp(finish_phase=finish)
    if task.status in ("failed", "cancelled"):
        message = f"task {task.project_name} of phase {phase.name} {task.status}"
        if task.error:
            message += f": {task.error}"
        return RollUp(finish_phase=finish, fail_run=message, failed_phase=phase.name)
    return RollUp(finish_phase=finish, check_run_success=outcome == "success" and discovered)


def _duration_seconds(run: Run) -> int:
    if run.completed_at is None:
        return 0
    return max(0, round((run.completed_at - run.started_at).total_seconds()))


def run_finished_events(run: Run) -> list[EventData]:
    """The events of a run that just finished: a failure is announced as ``pipeline.run.failed``
    and, like a success, ``pipeline.run.completed``; a cancellation has no event (the spec
    defines none), the workers hear of it on ``pipeline.cancel.<run id>``."""
    if run.status not in ("success", "failed"):
        return []
    status: Literal["success", "failed"] = "success" if run.status == "success" else "failed"
    completed = PipelineRunCompleted(
        run_id=run.id,
        repository=run.repository,
        commit_sha=run.commit_sha,
        status=status,
        duration_seconds=_duration_seconds(run),
    )
    if status == "success":
        return [completed]
    failed = PipelineRunFailed(
        run_id=run.id,
        repository=run.repository,
        commit_sha=run.commit_sha,
        failed_phase=run.failed_phase or "",
        error_message=run.error or "",
    )
    return [failed, completed]


def check_plan(phases: list[PhasePlan]) -> None:
    """Names must be unique where they identify something: phases in a run, projects in a
    phase, steps in a task."""
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


def commit_state_for(run_status: str) -> tuple[str, str]:
    """GitHub commit status state and description for a run status."""
    return {
        "pending": ("pending", "Forge pipeline run is queued"),
        "running": ("pending", "Forge pipeline run is running"),
        "success": ("success", "Forge pipeline run succeeded"),
        "failed": ("failure", "Forge pipeline run failed"),
        "cancelled": ("error", "Forge pipeline run was cancelled"),
    }[run_status]


# --- discovery plan (what the discovery job found) ---------------------------------------------


class StepPlan(msgspec.Struct, kw_only=True):
    name: str
    action: Literal["shell", "earthly"] = "shell"
    command: str = ""
    timeout_seconds: int | None = None
    # Sandbox limits (project.toml memory, processes, network); None: the worker's defaults.
    memory_bytes: int | None = None
    processes: int | None = None
    network: bool = True
    # The step's own environment variables (project.toml ``env``).
    env: dict[str, str] = msgspec.field(default_factory=dict)
    # Filled by service.store_discovery / load_plan.
    id: str | None = None
    position: int = 0
    status: str = "pending"


class TaskPlan(msgspec.Struct, kw_only=True):
    project_name: str
    project_path: str = "."
    steps: list[StepPlan] = msgspec.field(default_factory=list)
    id: str | None = None
    status: str = "pending"


class PhasePlan(msgspec.Struct, kw_only=True):
    name: str
    group_number: int
    timeout_seconds: int | None = None
    tasks: list[TaskPlan] = msgspec.field(default_factory=list)
    id: str | None = None
    status: str = "pending"


def artifacts_phase(phases: list[PhasePlan], artifacts: list[PlannedArtifact]) -> PhasePlan | None:
    """The run's ``artifacts`` phase: one group after the last CI group, one task per project,
    one step per artifact (its build command). None when no project declares an artifact."""
    if not artifacts:
        return None
    tasks: dict[str, TaskPlan] = {}
    for artifact in artifacts:
        task = tasks.setdefault(
            artifact.project, TaskPlan(project_name=artifact.project, project_path=artifact.project_path)
        )
        task.steps.append(
            StepPlan(name=artifact.name, command=artifact.build, timeout_seconds=artifact.timeout_seconds)
        )
    last_group = max((p.group_number for p in phases), default=0)
    return PhasePlan(name=ARTIFACTS_PHASE, group_number=last_group + 1, tasks=[tasks[k] for k in sorted(tasks)])
