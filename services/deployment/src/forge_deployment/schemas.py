"""The HTTP contract of the deployment service (spec "Deployment APIs"), as msgspec Structs.

Responses carry the spec's fields first; a few additive ones (repository, project,
reconciled_at, ...) help operators and never replace a spec field.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec

__all__ = ["CreateDeployment", "CurrentDeployment", "DeploymentAccepted", "DeploymentHistory", "HistoryEntry"]

Environment = Literal["dev", "staging", "production"]
Status = Literal["pending", "active", "superseded", "failed"]


class CreateDeployment(msgspec.Struct, kw_only=True):
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


class DeploymentHistory(msgspec.Struct, kw_only=True):
    deployments: list[HistoryEntry]
    total: int
    limit: int
    offset: int
