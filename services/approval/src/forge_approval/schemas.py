"""The HTTP contract of the approval service (msgspec Structs)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from forge_common.events import isoformat

from .domain import Approval, CheckResult

__all__ = ["ApprovalBatch", "ApprovalCheck", "ApprovalCreate", "ApprovalCreated", "ApprovalRevoke", "ApprovalView"]


class ApprovalCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/approvals``; ``expires_at`` (ISO-8601) asks for an earlier expiry."""

    example: ClassVar[dict[str, Any]] = {
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
        "justification": "CAB-1234 approved in the change meeting",
    }

    release_id: str
    environment: str
    justification: str
    expires_at: str | None = None


class ApprovalBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/approvals/batch``: approve each release for the environment, with one
    justification (and optionally one ``expires_at``)."""

    example: ClassVar[dict[str, Any]] = {
        "release_ids": ["7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d", "8d7c6b5a-4e3f-4b2a-9c1d-0e1f2a3b4c5d"],
        "environment": "production",
        "justification": "CAB-1234: weekly release train approved",
    }

    release_ids: list[str]
    environment: str
    justification: str
    expires_at: str | None = None


class ApprovalRevoke(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of ``DELETE /v1/approvals/{approval_id}``."""

    example: ClassVar[dict[str, Any]] = {"reason": "rollback planned instead"}

    reason: str | None = None


class ApprovalCreated(msgspec.Struct, kw_only=True):
    """``201`` answer of ``POST /v1/approvals``: the spec's fields plus what was approved."""

    example: ClassVar[dict[str, Any]] = {
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
        "approver": "bob@company.com",
        "approved_at": "2025-10-05T12:05:00Z",
        "expires_at": "2025-10-06T12:05:00Z",
        "status": "active",
        "justification": "CAB-1234 approved in the change meeting",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
    }

    approval_id: str
    approver: str
    approved_at: str
    expires_at: str
    status: Literal["active", "expired", "revoked"]
    release_id: str
    environment: str
    justification: str

    @classmethod
    def of(cls, approval: Approval, status: Literal["active", "expired", "revoked"]) -> ApprovalCreated:
        return cls(
            approval_id=approval.id,
            approver=approval.approver,
            approved_at=isoformat(approval.approved_at),
            expires_at=isoformat(approval.expires_at),
            status=status,
            release_id=approval.release_id,
            environment=approval.environment,
            justification=approval.justification,
        )


class ApprovalView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An approval as ``GET`` and ``DELETE`` show it; ``revoked_*`` only once revoked."""

    example: ClassVar[dict[str, Any]] = {
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
        "approver": "bob@company.com",
        "approved_at": "2025-10-05T12:05:00Z",
        "expires_at": "2025-10-06T12:05:00Z",
        "status": "active",
        "justification": "CAB-1234 approved in the change meeting",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "environment": "production",
    }

    approval_id: str
    approver: str
    approved_at: str
    expires_at: str
    status: Literal["active", "expired", "revoked"]
    justification: str
    release_id: str
    environment: str
    revoked_by: str | None = None
    revoked_at: str | None = None
    revocation_reason: str | None = None

    @classmethod
    def of(cls, approval: Approval, status: Literal["active", "expired", "revoked"]) -> ApprovalView:
        return cls(
            approval_id=approval.id,
            approver=approval.approver,
            approved_at=isoformat(approval.approved_at),
            expires_at=isoformat(approval.expires_at),
            status=status,
            justification=approval.justification,
            release_id=approval.release_id,
            environment=approval.environment,
            revoked_by=approval.revoked_by,
            revoked_at=isoformat(approval.revoked_at) if approval.revoked_at else None,
            revocation_reason=approval.revocation_reason,
        )


class ApprovalCheck(msgspec.Struct, kw_only=True):
    """Answer of ``GET /v1/approvals/check`` (cross-service contract #3)."""

    example: ClassVar[dict[str, Any]] = {
        "result": "active",
        "approval_id": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
        "expires_at": "2025-10-06T12:05:00Z",
        "checked_at": "2025-10-05T12:09:00Z",
    }

    result: CheckResult
    approval_id: str
    expires_at: str | None
    checked_at: str
