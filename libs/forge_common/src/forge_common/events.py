"""Event schemas of the platform, encoded exactly as the spec shows them.

Every event travels as an envelope ``{"event_id", "event_type", "timestamp", "data"}`` on
JetStream stream ``FORGE_EVENTS`` under subject ``events.<event_type>``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar, Literal

import msgspec

__all__ = [
    "EVENT_TYPES",
    "ApprovalCreated",
    "ApprovalRevoked",
    "DeploymentCompleted",
    "DeploymentCreated",
    "DeploymentFailed",
    "Envelope",
    "EventData",
    "PipelineRunCompleted",
    "PipelineRunCreated",
    "PipelineRunFailed",
    "ReleaseCreated",
    "envelope",
    "isoformat",
    "isoformat_or_none",
    "utcnow",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def isoformat(value: dt.datetime) -> str:
    """RFC 3339 UTC timestamp with a ``Z`` suffix, as every timestamp the platform emits."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def isoformat_or_none(value: dt.datetime | None) -> str | None:
    """:func:`isoformat` for an optional timestamp (a nullable column)."""
    return isoformat(value) if value is not None else None


class EventData(msgspec.Struct, kw_only=True):
    event_type: ClassVar[str]


class PipelineRunCreated(EventData):
    event_type: ClassVar[str] = "pipeline.run.created"
    run_id: str
    repository: str
    branch: str
    commit_sha: str
    triggered_by: str


class PipelineRunCompleted(EventData):
    event_type: ClassVar[str] = "pipeline.run.completed"
    run_id: str
    repository: str
    commit_sha: str
    status: Literal["success", "failed"]
    duration_seconds: int


class PipelineRunFailed(EventData):
    event_type: ClassVar[str] = "pipeline.run.failed"
    run_id: str
    repository: str
    commit_sha: str
    failed_phase: str
    error_message: str


class ReleaseCreated(EventData):
    event_type: ClassVar[str] = "release.created"
    release_id: str
    repository: str
    project: str
    commit_sha: str
    release_number: int
    trigger_type: Literal["branch_push", "tag", "manual"]


# Deployment and approval events name the release's repository and project after the spec's
# fields, as pipeline and release events do: a subscriber filtering on `data.repository`
# (GET /v1/events?repository=, webhook subscriptions) sees them.


class DeploymentCreated(EventData):
    event_type: ClassVar[str] = "deployment.created"
    deployment_id: str
    release_id: str
    environment: str
    deployed_by: str
    gitops_commit_sha: str
    repository: str
    project: str


class DeploymentCompleted(EventData):
    event_type: ClassVar[str] = "deployment.completed"
    deployment_id: str
    environment: str
    status: Literal["active", "failed"]
    reconciliation_duration_seconds: int
    repository: str
    project: str


class DeploymentFailed(EventData):
    """Not in the spec's list; emitted when a deployment's GitOps commit fails or it does not reconcile in time."""

    event_type: ClassVar[str] = "deployment.failed"
    deployment_id: str
    environment: str
    status: Literal["failed"]
    error_message: str
    repository: str
    project: str


class ApprovalCreated(EventData):
    event_type: ClassVar[str] = "approval.created"
    approval_id: str
    release_id: str
    environment: str
    approver: str
    expires_at: str
    repository: str
    project: str


class ApprovalRevoked(EventData):
    """`repository` and `project` are null only for an approval recorded before they were stored."""

    # Such an approval is revocable only until it expires: nulls end one approval TTL after the
    # approval service's migration 0002.

    event_type: ClassVar[str] = "approval.revoked"
    approval_id: str
    release_id: str
    environment: str
    revoked_by: str
    reason: str
    repository: str | None
    project: str | None


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.event_type: cls
    for cls in (
        PipelineRunCreated,
        PipelineRunCompleted,
        PipelineRunFailed,
        ReleaseCreated,
        DeploymentCreated,
        DeploymentCompleted,
        DeploymentFailed,
        ApprovalCreated,
        ApprovalRevoked,
    )
}


class Envelope(msgspec.Struct, kw_only=True):
    event_id: str
    event_type: str
    timestamp: str
    data: dict[str, Any]


def envelope(data: EventData, at: dt.datetime | None = None) -> Envelope:
    return Envelope(
        event_id=str(uuid.uuid4()),
        event_type=data.event_type,
        timestamp=isoformat(at or utcnow()),
        data=msgspec.to_builtins(data),
    )
