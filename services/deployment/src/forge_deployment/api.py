"""HTTP routes of the deployment service: decode, one call into service.py, encode."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post

from forge_common.auth import Permission, Principal
from forge_common.errors import InvalidRequest
from forge_common.runtime import Runtime

from .paths import parse_target_path, raw_path_segments
from .schemas import CreateDeployment, CurrentDeployment, DeploymentAccepted, DeploymentHistory
from .service import DeploymentService

__all__ = ["ROUTES"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _service(runtime: Runtime) -> DeploymentService:
    service: DeploymentService = runtime.extras["deployments"]
    return service


@post("/v1/deployments", opt={"permission": Permission.DEPLOYMENTS_CREATE}, status_code=201)
async def create_deployment(data: CreateDeployment, principal: Principal, runtime: Runtime) -> DeploymentAccepted:
    """Deploy a release to an environment (production needs an active approval)."""
    return await _service(runtime).create(data, principal.identity, principal.token)


@get("/v1/deployments/{path:path}", opt={"permission": Permission.READ})
async def read_deployments(
    path: str, request: Request[Any, Any, Any], runtime: Runtime
) -> CurrentDeployment | DeploymentHistory:
    """``{environment}/{repo}/{project}``: the active deployment; ``.../history``: all, newest first."""
    parsed = parse_target_path(raw_path_segments(request.scope))
    service = _service(runtime)
    if not parsed.history:
        return await service.current(parsed.target)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, minimum=1)
    offset = _int_param(request, "offset", 0, minimum=0)
    return await service.history(parsed.target, min(limit, MAX_LIMIT), offset)


def _int_param(request: Request[Any, Any, Any], name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", {"field": name}) from None
    if value < minimum:
        raise InvalidRequest(f"{name} must be >= {minimum}", {"field": name})
    return value


ROUTES: list[Any] = [create_deployment, read_deployments]
