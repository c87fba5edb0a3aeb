"""HTTP routes of the deployment service: decode, one call into service.py, encode."""

from __future__ import annotations

import re
from typing import Any

from litestar import MediaType, Request, Response, get, post
from litestar.exceptions import ValidationException

from forge_common.auth import Permission, Principal
from forge_common.errors import InvalidRequest, error_body
from forge_common.runtime import Runtime

from .paths import PREFIX, parse_target_path, raw_path_segments
from .schemas import CreateDeployment, CurrentDeployment, DeploymentAccepted, DeploymentHistory
from .service import DeploymentService

__all__ = ["ROUTES"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _service(runtime: Runtime) -> DeploymentService:
    service: DeploymentService = runtime.extras["deployments"]
    return service


def _invalid_body(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """The shell's 400, but naming the field even when it is missing (msgspec says ``data``)."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    message = str(first.get("message") or exc.detail or "invalid request body")
    field = str(first.get("key") or "")
    if missing := _MISSING.search(message):
        field = missing.group("name")
    if field in ("data", "body"):
        field = ""
    if message.strip("'") in ("data", "body"):
        message = "request body must be a JSON object"
    details = {"field": field} if field else {}
    return Response(error_body("invalid_request", message, details), status_code=400, media_type=MediaType.JSON)


@post(
    "/v1/deployments",
    opt={"permission": Permission.DEPLOYMENTS_CREATE},
    status_code=201,
    exception_handlers={ValidationException: _invalid_body},
)
async def create_deployment(data: CreateDeployment, principal: Principal, runtime: Runtime) -> DeploymentAccepted:
    """Deploy a release to an environment (production needs an active approval)."""
    return await _service(runtime).create(data, principal.identity, principal.token)


_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


@get("/v1/deployments/{path:path}", opt={"permission": Permission.READ})
async def read_deployments(
    path: str, request: Request[Any, Any, Any], runtime: Runtime
) -> CurrentDeployment | DeploymentHistory:
    """``{environment}/{repo}/{project}``: the active deployment; ``.../history``: all, newest first."""
    parsed = parse_target_path(raw_path_segments(request.scope, PREFIX))
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
