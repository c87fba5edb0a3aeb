"""HTTP routes of the deployment service: decode, one call into service.py, encode."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar import Request, get, post

from forge_common.auth import Permission, Principal
from forge_common.errors import InvalidRequest
from forge_common.runtime import Runtime

from .paths import PREFIX, parse_target_path, raw_path_segments
from .schemas import CreateDeployment, CurrentDeployment, DeploymentAccepted, DeploymentHistory
from .service import DeploymentService

__all__ = ["ROUTES"]

T = TypeVar("T")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _service(runtime: Runtime) -> DeploymentService:
    service: DeploymentService = runtime.extras["deployments"]
    return service


@post("/v1/deployments", opt={"permission": Permission.DEPLOYMENTS_CREATE}, status_code=201)
async def create_deployment(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime
) -> DeploymentAccepted:
    """Deploy a release to an environment (production needs an active approval)."""
    data = _decode(await request.body(), CreateDeployment)
    return await _service(runtime).create(data, principal.identity, principal.token)


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")


def _decode(body: bytes, typ: type[T]) -> T:
    """The request body as ``typ``; a bad one is a 400 naming the offending field."""
    if not body.strip():
        raise InvalidRequest("request body must be a JSON object")
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        m = _AT.match(str(exc))
        message = m.group("msg") if m else str(exc)
        field = (m.group("path") or "") if m else ""
        if missing := _MISSING.search(message):
            field = missing.group("name")
        raise InvalidRequest(message + (f" (at {field})" if field else ""), {"field": field} if field else {}) from None
    except msgspec.DecodeError:
        raise InvalidRequest("request body is not valid JSON") from None


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
