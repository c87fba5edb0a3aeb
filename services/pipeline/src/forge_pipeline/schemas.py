"""The HTTP contract of the pipeline service as msgspec Structs (spec: "Pipeline APIs")."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from forge_common.events import isoformat
from forge_common.openapi import ErrorEnvelope as ErrorBody  # the platform's one error envelope

from .records import Step, Task

__all__ = [
    "ArtifactView",
    "ErrorBody",
    "PhaseView",
    "RunCreate",
    "RunCreated",
    "RunDetail",
    "RunList",
    "RunSummary",
    "RunsCancel",
    "StepReportBody",
    "StepStatusUpdate",
    "StepStatusView",
    "StepView",
    "TaskReportBody",
    "TaskReportResult",
    "TaskStatusUpdate",
    "TaskStatusView",
    "TaskView",
    "WebhookResult",
]

TriggerType = Literal["push", "pull_request", "manual"]
ReportedStatus = Literal["running", "success", "failed"]


class RunCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "repository": "mycompany/myrepo",
        "branch": "main",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "trigger_type": "push",
    }

    repository: str
    branch: str
    commit_sha: str
    trigger_type: TriggerType
    # Recorded as given only for webhook-created runs; for API calls the caller's identity wins.
    triggered_by: str | None = None


class RunsCancel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/cancel``: ``ids``, or a filter (``repository``, optionally
    ``branch`` and ``status``: `pending` or `running`); ``dry_run`` changes nothing."""

    example: ClassVar[dict[str, Any]] = {"repository": "mycompany/myrepo", "branch": "feature/old", "dry_run": True}

    ids: list[str] | None = None
    repository: str | None = None
    branch: str | None = None
    status: Literal["pending", "running"] | None = None
    dry_run: bool = False


class RunCreated(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "status": "pending",
        "started_at": "2025-10-05T12:00:00Z",
    }

    id: str
    status: str
    started_at: str


class RunSummary(msgspec.Struct, kw_only=True):
    id: str
    repository: str
    commit_sha: str
    status: str
    started_at: str


class RunList(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "runs": [
            {
                "id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
                "repository": "mycompany/myrepo",
                "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "status": "success",
                "started_at": "2025-10-05T12:00:00Z",
            }
        ],
        "total": 150,
        "limit": 20,
        "offset": 0,
        "next_cursor": "eyJrIjpbIjIwMjUtMTAtMDVUMTI6MDA6MDBaIl19",
    }

    runs: list[RunSummary]
    total: int
    limit: int
    offset: int
    # Opaque: pass it as ?cursor= (with the same filters) for the next page; null on the last.
    next_cursor: str | None = None


# A worker's clock reading: an RFC 3339 timestamp with its UTC offset.
WorkerTime = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class TaskStatusUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"status": "failed", "error": "step test exited with 1"}

    status: ReportedStatus
    error: str | None = None


class StepStatusUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "status": "success",
        "exit_code": 0,
        "logs_s3_key": "pipeline-runs/0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f/logs/test/api/unit.log",
    }

    status: ReportedStatus
    exit_code: int | None = None
    logs_s3_key: str | None = None
    # When the step really started and ended on the worker (RFC 3339 with offset); kept within
    # [the task's first dispatch, the report's arrival]. Absent: the report's arrival.
    started_at: WorkerTime | None = None
    completed_at: WorkerTime | None = None


class StepReportBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    status: ReportedStatus
    exit_code: int | None = None
    logs_s3_key: str | None = None
    started_at: WorkerTime | None = None
    completed_at: WorkerTime | None = None


class TaskReportBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/tasks/{id}/report``: steps' statuses in order, then the task's, one transaction."""

    example: ClassVar[dict[str, Any]] = {
        "steps": [
            {
                "id": "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b",
                "status": "success",
                "exit_code": 0,
                "started_at": "2025-10-05T12:00:06.120Z",
                "completed_at": "2025-10-05T12:00:07.325Z",
            }
        ],
        "status": "success",
    }

    steps: list[StepReportBody] = msgspec.field(default_factory=list)
    status: ReportedStatus | None = None
    error: str | None = None


def _iso(value: dt.datetime | None) -> str | None:
    return isoformat(value) if value is not None else None


class TaskStatusView(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
        "run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "status": "success",
        "error": None,
        "started_at": "2025-10-05T12:00:05Z",
        "completed_at": "2025-10-05T12:01:55Z",
    }

    id: str
    run_id: str
    status: str
    error: str | None
    started_at: str | None
    completed_at: str | None

    @classmethod
    def of(cls, task: Task) -> TaskStatusView:
        return cls(
            id=task.id,
            run_id=task.run_id,
            status=task.status,
            error=task.error,
            started_at=_iso(task.started_at),
            completed_at=_iso(task.completed_at),
        )


class StepStatusView(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b",
        "task_id": "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
        "run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "status": "success",
        "exit_code": 0,
        "logs_s3_key": "pipeline-runs/0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f/logs/test/api/unit.log",
        "started_at": "2025-10-05T12:00:06Z",
        "completed_at": "2025-10-05T12:01:50Z",
    }

    id: str
    task_id: str
    run_id: str
    status: str
    exit_code: int | None
    logs_s3_key: str | None
    started_at: str | None
    completed_at: str | None

    @classmethod
    def of(cls, step: Step) -> StepStatusView:
        return cls(
            id=step.id,
            task_id=step.task_id,
            run_id=step.run_id,
            status=step.status,
            exit_code=step.exit_code,
            logs_s3_key=step.logs_s3_key,
            started_at=_iso(step.started_at),
            completed_at=_iso(step.completed_at),
        )


class TaskReportResult(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "task": TaskStatusView.example,
        "steps": [StepStatusView.example],
    }

    task: TaskStatusView | None
    steps: list[StepStatusView]


class StepView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    status: str
    exit_code: int | None
    # Beyond the spec: when the step's process started and ended on its worker (null before).
    started_at: str | None = None
    completed_at: str | None = None
    # Present only once the step has a log: a presigned S3 GET URL.
    logs_url: str | msgspec.UnsetType = msgspec.UNSET


class TaskView(msgspec.Struct, kw_only=True):
    id: str
    project_name: str
    status: str
    # Beyond the spec: from its first step's start to its last step's end, on its worker.
    started_at: str | None = None
    completed_at: str | None = None
    steps: list[StepView]


class PhaseView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    group_number: int
    status: str
    started_at: str | None
    completed_at: str | None
    tasks: list[TaskView]


class ArtifactView(msgspec.Struct, kw_only=True):
    """An artifact the run builds (issue 14): its step's status, and once built where it is."""

    name: str
    project: str
    type: str
    status: str
    digest: str | None = None
    size: int | None = None
    tracking_oci_uri: str | None = None
    primary_published_uri: str | None = None
    published_uris: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class RunDetail(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "repository": "mycompany/myrepo",
        "branch": "main",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "status": "success",
        "triggered_by": "alice@company.com",
        "trigger_type": "push",
        "started_at": "2025-10-05T12:00:00Z",
        "completed_at": "2025-10-05T12:02:00Z",
        "phases": [
            {
                "id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                "name": "test",
                "group_number": 1,
                "status": "success",
                "started_at": "2025-10-05T12:00:05.204Z",
                "completed_at": "2025-10-05T12:01:54.873Z",
                "tasks": [
                    {
                        "id": "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
                        "project_name": "api",
                        "status": "success",
                        "started_at": "2025-10-05T12:00:05.204Z",
                        "completed_at": "2025-10-05T12:01:54.873Z",
                        "steps": [
                            {
                                "id": "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b",
                                "name": "unit",
                                "status": "success",
                                "exit_code": 0,
                                "started_at": "2025-10-05T12:00:05.204Z",
                                "completed_at": "2025-10-05T12:01:54.873Z",
                                "logs_url": "https://s3.example.com/forge/pipeline-runs/0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f/logs/test/api/unit.log",
                            }
                        ],
                    }
                ],
            }
        ],
    }

    id: str
    repository: str
    branch: str
    commit_sha: str
    status: str
    triggered_by: str
    trigger_type: TriggerType
    started_at: str
    completed_at: str | None
    error: str | None = None
    failed_phase: str | None = None
    # Beyond the spec: why the release of this successful run could not be made (after retries).
    release_error: str | None = None
    phases: list[PhaseView]
    artifacts: list[ArtifactView] = msgspec.field(default_factory=list)


class WebhookResult(msgspec.Struct, kw_only=True):
    """What a delivery did; fields that do not apply to the outcome are left out."""

    status: str
    delivery_id: str
    run_id: str | msgspec.UnsetType | None = msgspec.UNSET
    tag: str | msgspec.UnsetType = msgspec.UNSET
    reason: str | msgspec.UnsetType = msgspec.UNSET
    # ``ping``: GitHub's zen line, echoed.
    zen: str | msgspec.UnsetType | None = msgspec.UNSET
