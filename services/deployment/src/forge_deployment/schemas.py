"""The HTTP contract of the deployment service (spec "Deployment APIs"), as msgspec Structs.

Responses carry the spec's fields first; a few additive ones (repository, project,
reconciled_at, ...) help operators and never replace a spec field.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

from forge_common.events import isoformat, isoformat_or_none

__all__ = ["CurrentDeployment", "DeploymentAccepted", "DeploymentCreate", "DeploymentHistory", "HistoryEntry"]

Environment = Literal["dev", "staging", "production"]
Status = Literal["pending", "active", "superseded", "failed"]


class DeploymentCreate(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/deployments``; ``approval_id`` is required for production."""

    release_id: uuid.UUID
    environment: Environment
    approval_id: uuid.UUID | None = None


class DeploymentAccepted(msgspec.Struct, kw_only=True):
    id: str
    deployment_id: str
    gitops_commit_sha: str
    status: Status


class CurrentDeployment(msgspec.Struct, kw_only=True):
    deployment_id: str
    release_id: str
    release_number: int
    environment: str
    status: Status
    deployed_at: str
    deployed_by: str
    gitops_commit_sha: str
    repository: str
    project: str
    reconciled_at: str | None
    approval_id: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> CurrentDeployment:
        return cls(
            deployment_id=str(row["id"]),
            release_id=str(row["release_id"]),
            release_number=row["release_number"],
            environment=row["environment"],
            status=row["status"],
            deployed_at=isoformat(row["deployed_at"]),
            deployed_by=row["deployed_by"],
            gitops_commit_sha=row["gitops_commit_sha"] or "",
            repository=row["repository"],
            project=row["project"],
            reconciled_at=isoformat_or_none(row["reconciled_at"]),
            approval_id=str(row["approval_id"]) if row["approval_id"] else None,
        )


class HistoryEntry(msgspec.Struct, kw_only=True):
    id: str
    release_number: int
    status: Status
    deployed_at: str
    deployed_by: str
    release_id: str
    gitops_commit_sha: str | None
    reconciled_at: str | None
    error: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> HistoryEntry:
        return cls(
            id=str(row["id"]),
            release_number=row["release_number"],
            status=row["status"],
            deployed_at=isoformat(row["deployed_at"]),
            deployed_by=row["deployed_by"],
            release_id=str(row["release_id"]),
            gitops_commit_sha=row["gitops_commit_sha"],
            reconciled_at=isoformat_or_none(row["reconciled_at"]),
            error=row["error"],
        )


class DeploymentHistory(msgspec.Struct, kw_only=True):
    deployments: list[HistoryEntry]
    total: int
    limit: int
    offset: int
    # Opaque: pass it as ?cursor= for the next page; null on the last.
    next_cursor: str | None = None
