"""HTTP routes of the approval service: decode, one call into service.py, encode."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, post

from forge_common import batch
from forge_common.auth import Permission, Principal
from forge_common.batch import MAX_BATCH_ITEMS, BatchResult
from forge_common.events import isoformat
from forge_common.http import decode_body
from forge_common.openapi import body_operation, errors, internal, response
from forge_common.runtime import Runtime

from .schemas import ApprovalBatch, ApprovalCheck, ApprovalCreate, ApprovalCreated, ApprovalRevoke, ApprovalView
from .service import ApprovalService, CreateApproval, RevokeApproval

__all__ = ["ROUTES"]

SERVICE_KEY = "approval_service"


def _service(runtime: Runtime) -> ApprovalService:
    service: ApprovalService = runtime.extras[SERVICE_KEY]
    return service


@post(
    "/v1/approvals",
    status_code=201,
    opt={"permission": Permission.APPROVALS_WRITE},
    operation_class=body_operation(ApprovalCreate, "`expires_at` (ISO-8601) asks for an earlier expiry"),
    responses={
        201: response(ApprovalCreated, "approved"),
        **errors(
            {
                403: "not an approver, or the approver created the release",
                404: "the release does not exist",
                409: "the release already has an active approval for the environment",
            }
        ),
    },
)
async def create_approval(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> ApprovalCreated:
    """Approve a release for an environment (approver or admin; never the release's creator)."""
    data = decode_body(await request.body(), ApprovalCreate)
    approval, status = await _service(runtime).create(
        CreateApproval(
            release_id=data.release_id,
            environment=data.environment,
            justification=data.justification,
            approver=principal.identity,
            token=principal.token,
            expires_at=data.expires_at,
            approver_subject=principal.subject,
            approver_claims=principal.claims,
        )
    )
    return ApprovalCreated.of(approval, status)


@post(
    "/v1/approvals/batch",
    status_code=200,
    opt={"permission": Permission.APPROVALS_WRITE},
    operation_class=body_operation(ApprovalBatch, "the releases, the environment, one justification"),
    description="One result per release, in order, each with the status and body (or error) `POST "
    "/v1/approvals` answers for it: 201, or 400, 403 (the approver created the release), 404, 409 (already "
    f"approved). Each approval is recorded on its own. At most {MAX_BATCH_ITEMS} releases per request "
    "(400 beyond).",
    responses={200: response(BatchResult, "one result per release")},
)
async def approve_batch(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> BatchResult:
    """Approve many releases for one environment with one justification."""
    data = decode_body(await request.body(), ApprovalBatch)
    batch.check_size(len(data.release_ids), "release_ids")
    return await _service(runtime).create_many(
        [
            CreateApproval(
                release_id=release_id,
                environment=data.environment,
                justification=data.justification,
                approver=principal.identity,
                token=principal.token,
                expires_at=data.expires_at,
                approver_subject=principal.subject,
                approver_claims=principal.claims,
            )
            for release_id in data.release_ids
        ]
    )


@get(
    "/v1/approvals/check",
    opt={"permission": Permission.READ, **internal()},
    responses={200: response(ApprovalCheck, "the answer, as of `checked_at`")},
)
async def check_approval(
    runtime: Runtime,
    principal: Principal,
    approval_id: str | None = None,
    release_id: str | None = None,
    environment: str | None = None,
) -> ApprovalCheck:
    """Is approval X active for release R in environment E right now? (used by deployments)"""
    if release_id is not None:
        await _service(runtime).require_release_access(release_id, principal)
    answer = await _service(runtime).check(approval_id, release_id, environment)
    return ApprovalCheck(
        result=answer.result,
        approval_id=answer.approval_id,
        expires_at=isoformat(answer.expires_at) if answer.expires_at else None,
        checked_at=isoformat(answer.checked_at),
    )


@get(
    "/v1/approvals/{release_id:str}/{environment:str}",
    opt={"permission": Permission.READ},
    responses={200: response(ApprovalView, "the approval")},
)
async def get_approval(release_id: str, environment: str, runtime: Runtime, principal: Principal) -> ApprovalView:
    """The active approval of the release for the environment, else the most recent one."""
    await _service(runtime).require_release_access(release_id, principal)
    approval, status = await _service(runtime).current(release_id, environment)
    return ApprovalView.of(approval, status)


@get(
    "/v1/approvals/{approval_id:str}",
    opt={"permission": Permission.READ},
    responses={200: response(ApprovalView, "the approval")},
)
async def get_approval_by_id(approval_id: str, runtime: Runtime, principal: Principal) -> ApprovalView:
    """One approval by its id, whatever its status (extension)."""
    approval, status = await _service(runtime).get(approval_id)
    await _service(runtime).require_release_access(approval.release_id, principal)
    return ApprovalView.of(approval, status)


@delete(
    "/v1/approvals/{approval_id:str}",
    status_code=200,
    opt={"permission": Permission.APPROVALS_WRITE},
    operation_class=body_operation(
        ApprovalRevoke, "optional; `reason` may also be given as a query parameter", required=False
    ),
    responses={
        200: response(ApprovalView, "the approval, revoked"),
        **errors({409: "the approval is already revoked or expired"}),
    },
)
async def revoke_approval(
    approval_id: str,
    request: Request[Any, Any, Any],
    principal: Principal,
    runtime: Runtime,
    reason: str | None = None,
) -> ApprovalView:
    """Revoke an active approval; the reason comes from a JSON body or the ``reason`` query."""
    raw = await request.body()
    if raw.strip():
        body = decode_body(raw, ApprovalRevoke)
        if body.reason is not None:
            reason = body.reason
    approval, status = await _service(runtime).revoke(
        RevokeApproval(approval_id=approval_id, revoked_by=principal.identity, reason=reason)
    )
    return ApprovalView.of(approval, status)


ROUTES: list[Any] = [create_approval, approve_batch, check_approval, get_approval, get_approval_by_id, revoke_approval]
