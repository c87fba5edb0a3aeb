"""HTTP routes of the deployment service: decode, one call into service.py, encode."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post

from forge_common.auth import Permission, Principal, require_repository
from forge_common.batch import MAX_BATCH_ITEMS, BatchResult
from forge_common.errors import InvalidRequest
from forge_common.http import decode_body, parse_page, strict_query
from forge_common.openapi import PathForm, body_operation, errors, path_forms, response
from forge_common.runtime import Runtime

from .paths import PREFIX, parse_target_path, raw_path_segments
from .schemas import CurrentDeployment, DeploymentAccepted, DeploymentCreate, DeploymentHistory, DeploymentsPromote
from .service import CreateDeployment, DeploymentService, PromoteDeployments

__all__ = ["ROUTES"]


def _service(runtime: Runtime) -> DeploymentService:
    service: DeploymentService = runtime.extras["deployments"]
    return service


@post(
    "/v1/deployments",
    opt={"permission": Permission.DEPLOYMENTS_CREATE},
    status_code=201,
    operation_class=body_operation(DeploymentCreate, "`approval_id` is required for production"),
    responses={
        201: response(DeploymentAccepted, "accepted: the GitOps commit landed, reconciliation pending"),
        **errors(
            {
                403: "not a deployer, or production without an active approval for this release",
                404: "the release (or the approval) does not exist",
                429: "too many deployments pending (`limit_exceeded`), or the user's rate limit",
                502: "the GitOps commit did not land: the remote refused the push or could not be reached,"
                " or committing failed inside the service (`details.reason`); the deployment is recorded"
                " `failed` (`details.deployment_id`, one `deployment.failed`). Also the gateway's answer when"
                " the deployment service is unreachable",
                504: "the GitOps remote did not answer in time (`details.operation`, `details.remote`); the"
                " deployment is recorded `failed`, and `details.unconfirmed_commit` names the commit when the"
                " remote could not be asked afterwards whether the push landed. Also the gateway's answer"
                " when the deployment service does not answer in time",
            }
        ),
    },
)
async def create_deployment(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime
) -> DeploymentAccepted:
    """Deploy a release to an environment (production needs an active approval)."""
    data = decode_body(await request.body(), DeploymentCreate)
    return await _service(runtime).create(
        CreateDeployment(
            release_id=str(data.release_id),
            environment=data.environment,
            approval_id=str(data.approval_id) if data.approval_id else None,
            deployed_by=principal.identity,
            token=principal.token,
            principal=principal,
        )
    )


@post(
    "/v1/deployments/promote",
    opt={"permission": Permission.DEPLOYMENTS_CREATE},
    status_code=200,
    operation_class=body_operation(DeploymentsPromote, "`approvals` (release id -> approval id) for production"),
    description="One result per project, in order, each with the status and body (or error) `POST "
    "/v1/deployments` answers for the release active in `from_environment` (404 when none is): 201, or "
    "400 (no approval given for production), 403 (approval not active), 429 (too many pending). Each "
    f"project is deployed on its own; at most {MAX_BATCH_ITEMS} projects per request (400 beyond).",
    responses={
        200: response(BatchResult, "one result per project"),
        **errors({404: "`projects` omitted and nothing of the repository is active in `from_environment`"}),
    },
)
async def promote_deployments(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> BatchResult:
    """Promote what runs in one environment to another, for many projects of a repository."""
    data = decode_body(await request.body(), DeploymentsPromote)
    if not data.repository.strip():
        raise InvalidRequest("`repository` must not be empty", {"field": "repository"})
    return await _service(runtime).promote(
        PromoteDeployments(
            repository=data.repository,
            projects=data.projects,
            source=data.from_environment,
            target=data.to_environment,
            approvals={str(release): str(approval) for release, approval in data.approvals.items()},
            deployed_by=principal.identity,
            token=principal.token,
            principal=principal,
        )
    )


_TARGET = "/v1/deployments/{environment}/{owner}/{name}/{project}"
_PARAMETERS = {
    "environment": "`dev`, `staging` or `production`",
    "owner": "the repository's owner; `{owner}/{name}` may also be sent as one segment `owner%2Fname`",
    "name": "the repository's name",
    "project": "the project",
}


@get(
    "/v1/deployments/{path:path}",
    opt={
        "permission": Permission.READ,
        # The one route of the history list and the current deployment: both refuse a
        # parameter neither takes.
        **strict_query(),
        **path_forms(
            PathForm(
                _TARGET,
                "The active deployment of a project in an environment",
                CurrentDeployment,
                parameters=_PARAMETERS,
            ),
            PathForm(
                _TARGET + "/history",
                "A project's deployments to an environment, newest first",
                DeploymentHistory,
                description="`limit` 1..100 (default 20); then either `offset` from 0, or `cursor`: a "
                "response's `next_cursor` (null on the last page), stable under inserts and fast at any depth.",
                query=("limit", "offset", "cursor"),
                parameters=_PARAMETERS,
            ),
        ),
    },
)
async def read_deployments(
    path: str,
    request: Request[Any, Any, Any],
    runtime: Runtime,
    principal: Principal,
    limit: str | None = None,
    offset: str | None = None,
    cursor: str | None = None,
) -> CurrentDeployment | DeploymentHistory:
    """``{environment}/{repo}/{project}``: the active deployment; ``.../history``: all, newest first.

    ``limit`` (1..100, default 20) and ``offset`` page the history, or ``cursor`` (a response's
    ``next_cursor``, null on the last page).
    """
    parsed = parse_target_path(raw_path_segments(request.scope, PREFIX))
    require_repository(principal, parsed.target.repository)
    service = _service(runtime)
    if not parsed.history:
        return await service.current(parsed.target)
    page = parse_page(limit, offset)
    return await service.history(parsed.target, page.limit, page.offset, cursor)


ROUTES: list[Any] = [create_deployment, promote_deployments, read_deployments]
