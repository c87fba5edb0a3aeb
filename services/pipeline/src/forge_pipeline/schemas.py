"""The HTTP contract of the pipeline service as msgspec Structs (spec: "Pipeline APIs")."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "RunCreate",
    "RunCreated",
    "RunList",
    "RunSummary",
    "StepStatusUpdate",
    "StepStatusView",
    "TaskStatusUpdate",
    "TaskStatusView",
]

TriggerType = Literal["push", "pull_request", "manual"]
ReportedStatus = Literal["running", "success", "failed"]


class RunCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    repository: str
    branch: str
    commit_sha: str
    trigger_type: TriggerType
    # Recorded as given only for webhook-created runs; for API calls the caller's identity wins.
    triggered_by: str | None = None


class RunCreated(msgspec.Struct, kw_only=True):
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
    runs: list[RunSummary]
    total: int
    limit: int
    offset: int


class TaskStatusUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: ReportedStatus
    error: str | None = None


class StepStatusUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    status: ReportedStatus
    exit_code: int | None = None
    logs_s3_key: str | None = None


class TaskStatusView(msgspec.Struct, kw_only=True):
    id: str
    run_id: str
    status: str
    error: str | None
    started_at: str | None
    completed_at: str | None


class StepStatusView(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    run_id: str
    status: str
    exit_code: int | None
    logs_s3_key: str | None
    started_at: str | None
    completed_at: str | None
