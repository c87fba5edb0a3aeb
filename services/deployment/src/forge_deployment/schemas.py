"""The HTTP contract of the deployment service (spec "Deployment APIs"), as msgspec Structs.

Responses carry the spec's fields first; a few additive ones (repository, project,
reconciled_at, ...) help operators and never replace a spec field.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal

import msgspec

from forge_common.events import isoformat, isoformat_or_none

from .domain import Deployment

__all__ = [
    "CurrentDeployment",
    "DeploymentAccepted",
    "DeploymentCreate",
    "DeploymentHistory",
    "DeploymentsPromote",
    "HistoryEntry",
]

Environment = Literal["dev", "staging", "production"]
Status = Literal["pending", "active", "superseded", "failed"]


class DeploymentCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/deployments``; ``approval_id`` is required for production."""

    example: ClassVar[dict[str, Any]] = {
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
    }

    release_id: uuid.UUID
    environment: Environment
    approval_id: uuid.UUID | None = None


class DeploymentsPromote(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/deployments/promote``: per project (``projects``, or every project of the
    repository active in ``from_environment``), deploy the release active in ``from_environment``
    to ``to_environment``. ``approvals`` maps release id -> approval id; production needs one
    per release."""

    example: ClassVar[dict[str, Any]] = {
        "repository": "mycompany/myrepo",
        "projects": ["api", "web"],
        "from_environment": "staging",
        "to_environment": "production",
        "approvals": {
            "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
            "8d7c6b5a-4e3f-4b2a-9c1d-0e1f2a3b4c5d": "6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c",
        },
    }

    repository: str
    from_environment: Environment
    to_environment: Environment
    projects: list[str] | None = None
    approvals: dict[uuid.UUID, uuid.UUID] = msgspec.field(default_factory=dict)


class DeploymentAccepted(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        "deployment_id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        "gitops_commit_sha": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
        "status": "pending",
    }

    id: str
    deployment_id: str
    gitops_commit_sha: str
    status: Status


class CurrentDeployment(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "deployment_id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "release_number": 42,
        "environment": "production",
        "status": "active",
        "deployed_at": "2025-10-05T12:10:00Z",
        "deployed_by": "alice@company.com",
        "gitops_commit_sha": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
        "repository": "mycompany/myrepo",
        "project": "api",
        "reconciled_at": "2025-10-05T12:10:45Z",
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
    }

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
    def of(cls, d: Deployment) -> CurrentDeployment:
        return cls(
            deployment_id=d.id,
            release_id=d.release_id,
            release_number=d.release_number,
            environment=d.environment,
            status=d.status,
            deployed_at=isoformat(d.deployed_at),
            deployed_by=d.deployed_by,
            gitops_commit_sha=d.gitops_commit_sha or "",
            repository=d.repository,
            project=d.project,
            reconciled_at=isoformat_or_none(d.reconciled_at),
            approval_id=d.approval_id or None,
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
    def of(cls, d: Deployment) -> HistoryEntry:
        return cls(
            id=d.id,
            release_number=d.release_number,
            status=d.status,
            deployed_at=isoformat(d.deployed_at),
            deployed_by=d.deployed_by,
            release_id=d.release_id,
            gitops_commit_sha=d.gitops_commit_sha,
            reconciled_at=isoformat_or_none(d.reconciled_at),
            error=d.error,
        )


class DeploymentHistory(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "deployments": [
            {
                "id": "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
                "release_number": 42,
                "status": "superseded",
                "deployed_at": "2025-10-05T12:10:00Z",
                "deployed_by": "alice@company.com",
                "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
                "gitops_commit_sha": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
                "reconciled_at": "2025-10-05T12:10:45Z",
                "error": None,
            }
        ],
        "total": 50,
        "limit": 20,
        "offset": 0,
        "next_cursor": "eyJrIjpbNDFdfQ",
    }

    deployments: list[HistoryEntry]
    total: int
    limit: int
    offset: int
    # Opaque: pass it as ?cursor= for the next page; null on the last.
    next_cursor: str | None = None
