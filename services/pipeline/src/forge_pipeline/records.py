"""Typed rows of the ``pipeline`` schema, as ``store.py`` reads them.

Plain msgspec Structs built by psycopg's ``kwargs_row`` (no per-row dict, no validation cost):
the column lists in ``store.py`` name exactly these fields. ``domain.py`` decides on them,
``service.py`` turns them into the HTTP schemas.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

__all__ = [
    "ArtifactRow",
    "Delivery",
    "DispatchRun",
    "Dispatched",
    "LeaseState",
    "PhaseStatus",
    "PhaseTally",
    "ReleaseTriggers",
    "Run",
    "RunStatus",
    "RunSummary",
    "Step",
    "Task",
    "TaskInPhase",
    "TaskState",
    "WorkStatus",
]

RunStatus = Literal["pending", "running", "success", "failed", "cancelled"]
# A phase has no cancelled state: a cancelled run leaves its open phases skipped.
PhaseStatus = Literal["pending", "running", "success", "failed", "skipped"]
# Tasks and steps share one set of statuses.
WorkStatus = Literal["pending", "running", "success", "failed", "skipped", "cancelled"]


class Run(msgspec.Struct, kw_only=True):
    id: str
    repository: str
    branch: str
    commit_sha: str
    tag: str | None
    triggered_by: str
    triggered_by_id: str | None = None
    trigger_type: Literal["push", "pull_request", "manual"]
    status: RunStatus
    error: str | None
    failed_phase: str | None
    release_error: str | None = None
    request_fingerprint: str | None
    started_at: dt.datetime
    completed_at: dt.datetime | None
    discovered_at: dt.datetime | None
    tree_version: int


class RunSummary(msgspec.Struct, kw_only=True):
    id: str
    repository: str
    commit_sha: str
    status: RunStatus
    started_at: dt.datetime
    created_at: dt.datetime


class Task(msgspec.Struct, kw_only=True):
    id: str
    run_id: str
    phase_id: str
    project_name: str
    status: WorkStatus
    error: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None


class TaskInPhase(Task, kw_only=True):
    """A task with its phase's status (what a report needs to know to start the phase)."""

    phase_status: PhaseStatus
    # When the task's job was first published: the earliest a worker's reported time may be.
    dispatched_at: dt.datetime | None = None


class Step(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    run_id: str
    status: WorkStatus
    exit_code: int | None
    logs_s3_key: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None


class PhaseTally(msgspec.Struct, kw_only=True):
    """A phase and the statuses of all its tasks (read after a task finished)."""

    id: str
    name: str
    status: PhaseStatus
    task_statuses: list[WorkStatus]


class Delivery(msgspec.Struct, kw_only=True):
    delivery_id: str
    event: str
    outcome: str
    run_id: str | None


# --- the dispatcher's reads (execution_store.py) ---------------------------------------------------

# ``runs.release_triggers``: project -> its ``[[release.triggers]]`` rules, e.g.
# ``{"api": [{"branch": "main"}, {"tag": true}]}`` (written by discovery, read once per run).
ReleaseTriggers = dict[str, list[dict[str, str | bool]]]


class DispatchRun(msgspec.Struct, kw_only=True):
    id: str
    repository: str
    branch: str
    commit_sha: str
    tag: str | None
    triggered_by: str
    triggered_by_id: str | None = None
    status: RunStatus
    lease_owner: str | None
    discovered_at: dt.datetime | None
    release_triggers: ReleaseTriggers | None
    release_evaluated_at: dt.datetime | None
    # traceparent/tracestate of the request that created the run (the dispatcher continues it)
    trace_context: dict[str, str] = msgspec.field(default_factory=dict)


class LeaseState(msgspec.Struct, kw_only=True):
    id: str
    lease_owner: str | None
    status: RunStatus


class TaskState(msgspec.Struct, kw_only=True):
    id: str
    status: WorkStatus
    error: str | None


class Dispatched(msgspec.Struct, kw_only=True):
    """When a task was first dispatched, the database's clock at this dispatch, and the
    dispatch attempt id its job carries."""

    id: str
    dispatched_at: dt.datetime
    now: dt.datetime
    attempt: str


class ArtifactRow(msgspec.Struct, kw_only=True):
    """One artifact of a run (``pipeline.artifacts``) with its step's status."""

    id: str
    task_id: str
    project: str
    project_path: str
    name: str
    artifact_type: Literal["container", "binary", "archive"]
    build: str
    path: str
    publish: list[str]
    timeout_seconds: int | None
    status: WorkStatus
    digest: str | None
    size: int | None
    tracking_oci_uri: str | None
    published_uris: list[str]
    error: str | None


class Publication(msgspec.Struct, kw_only=True):
    """A publication of a built artifact for a tag (``pipeline.artifact_publications``), as its
    job needs it: the artifact's identity, digest and tracking reference, and the dispatch
    attempt id the job carries."""

    id: str
    artifact_id: str
    tag: str
    attempt: str
    project: str
    name: str
    artifact_type: Literal["container", "binary", "archive"]
    digest: str
    tracking_oci_uri: str
