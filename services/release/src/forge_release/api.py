"""HTTP routes of the release service: decode, one call into service.py, encode.

``{repo}`` is ``owner/name`` and so contains a slash. It is accepted both as two path segments
(``/v1/releases/owner/name/project``) and percent-encoded as one (``/v1/releases/owner%2Fname/project``).
Servers decode ``%2F`` in the ASGI ``path``, which would make the two forms (and an encoded
slash inside a branch alias) indistinguishable, so everything below ``/v1/releases/`` is one
catch-all route per method that splits the undecoded ``raw_path`` itself and percent-decodes
each segment:

* ``GET  /v1/releases/{release_uuid}``                      (contract #1, one segment)
* ``GET  /v1/releases/{repo}/{project}``                    list, newest first
* ``GET  /v1/releases/{repo}/{project}/{release-id}``       one release
* ``POST /v1/releases/{repo}/{project}/{release-id}/aliases``
* ``DELETE /v1/releases/{repo}/{project}/{release-id}/aliases/{alias}``
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from forge_common.auth import Permission, Principal, repository_filter, require_repository
from forge_common.errors import NotFound
from forge_common.http import decode_body, parse_page, strict_query
from forge_common.openapi import PathForm, body_operation, errors, path_forms, response
from forge_common.paths import raw_path_segments
from forge_common.runtime import Runtime
from forge_common.search import ReleaseSearchResults

from .schemas import (
    AliasCreate,
    AliasResult,
    Release,
    ReleaseCreate,
    ReleaseCreated,
    ReleaseList,
    release_page,
)
from .service import CreateRelease, ReleaseService

__all__ = ["ROUTES"]

_PREFIX = "/v1/releases/"
SERVICE_KEY = "release_service"


def _service(runtime: Runtime) -> ReleaseService:
    svc: ReleaseService = runtime.extras[SERVICE_KEY]
    return svc


def _segments(request: Request[Any, Any, Any]) -> list[str]:
    parts = raw_path_segments(request.scope, _PREFIX)
    if not parts or any(p == "" for p in parts):
        raise NotFound("resource not found")
    return parts


def _split_repo(parts: list[str]) -> tuple[str, list[str]]:
    """``owner%2Fname`` (one segment holding a slash) or ``owner/name`` (two segments)."""
    if "/" in parts[0]:
        return parts[0], parts[1:]
    if len(parts) < 2:
        raise NotFound("resource not found: use /v1/releases/{owner}/{name}/{project}[/{release-id}]")
    return f"{parts[0]}/{parts[1]}", parts[2:]


# What the OpenAPI document shows in place of the catch-all routes (forge_common.openapi).
_PROJECT = "/v1/releases/{owner}/{name}/{project}"
_PARAMETERS = {
    "owner": "the repository's owner; `{owner}/{name}` may also be sent as one segment `owner%2Fname`",
    "name": "the repository's name",
    "project": "the project (a directory of the repository holding `.forge/project.toml`)",
    "release_id": "a full or abbreviated (7+ hex) commit SHA, a release number, a tag or any alias, tried in that order",
    "release_uuid": "the release's id",
    "alias": "a `branch` or `custom` alias of the release",
}
_REST = Annotated[
    str,
    Parameter(
        description="`{release_uuid}` | `{repo}/{project}` | `{repo}/{project}/{release-id}` "
        "(`/aliases`, `/aliases/{alias}` for POST/DELETE); `{repo}` as `owner/name` or `owner%2Fname`; "
        "`{release-id}`: commit SHA (full or >= 7 hex), release number, tag or alias, in that order"
    ),
]


@post(
    "/v1/releases",
    opt={"permission": Permission.RELEASES_CREATE},
    status_code=HTTP_201_CREATED,
    operation_class=body_operation(ReleaseCreate, "the release; `trigger` is optional (absent: manual)"),
    responses={
        201: response(ReleaseCreated, "created"),
        **errors({409: "a release of this commit exists already, or its number is taken"}),
    },
)
async def create_release(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> ReleaseCreated:
    """Create a release (spec: Create Release; optional ``trigger``, contract #2)."""
    data = decode_body(await request.body(), ReleaseCreate)
    require_repository(principal, data.repository)
    created = await _service(runtime).create(
        CreateRelease(
            repository=data.repository,
            project=data.project,
            commit_sha=data.commit_sha,
            pipeline_run_id=data.pipeline_run_id,
            artifacts=[
                (a.name, a.type, a.tracking_oci_uri, a.primary_published_uri, a.digest, a.size) for a in data.artifacts
            ],
            trigger=(data.trigger.trigger_type, data.trigger.branch, data.trigger.tag) if data.trigger else None,
            created_by=principal.identity,
            service_account=principal.service_account,
            token=principal.token,
            on_behalf_of=data.trigger.triggered_by if data.trigger else None,
            subject=principal.subject,
            on_behalf_of_id=data.trigger.triggered_by_id if data.trigger else None,
        )
    )
    return ReleaseCreated.of(created)


@get(
    "/v1/releases/search",
    opt={"permission": Permission.READ, **strict_query()},
    summary="Releases by commit prefix, branch, tag, alias or author, newest first (docs/api-search.md)",
    description="`q` required (<= 200 characters); `repository` narrows; `limit` 1..100 (default 20); "
    "`cursor`: the previous page's next_cursor.",
    responses={200: response(ReleaseSearchResults, "one page of matching releases")},
)
async def search(
    runtime: Runtime,
    principal: Principal,
    q: str | None = None,
    repository: str | None = None,
    limit: str | None = None,
    cursor: str | None = None,
) -> ReleaseSearchResults:
    # A repository-bound token (forge_repository claim) searches its own repository only.
    page = await _service(runtime).search(q, repository_filter(principal, repository), limit, cursor)
    return release_page(page)


@get(
    "/v1/releases/{rest:path}",
    opt={
        "permission": Permission.READ,
        # The one route of a list and two reads: a parameter none of them takes is refused.
        **strict_query(),
        **path_forms(
            PathForm(
                "/v1/releases/{release_uuid}",
                "Get a release by its id",
                Release,
                parameters=_PARAMETERS,
                internal=True,
            ),
            PathForm(
                _PROJECT,
                "List a project's releases, newest first",
                ReleaseList,
                description="`limit` 1..100 (default 20); then either `offset` from 0, or `cursor`: a "
                "response's `next_cursor` (null on the last page), stable under inserts and fast at any depth.",
                query=("limit", "offset", "cursor"),
                parameters=_PARAMETERS,
            ),
            PathForm(_PROJECT + "/{release_id}", "Get a release", Release, parameters=_PARAMETERS),
        ),
    },
    responses={200: response(Release, "one release")},
)
async def read_releases(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    principal: Principal,
    rest: _REST,
    limit: str | None = None,
    offset: str | None = None,
    cursor: str | None = None,
) -> Release | ReleaseList:
    """Get a release by UUID, list a project's releases, or get one by ``{release-id}``."""
    parts = _segments(request)
    svc = _service(runtime)
    if len(parts) == 1 and "/" not in parts[0]:
        try:
            release_id = str(uuid.UUID(parts[0]))
        except ValueError:
            raise NotFound(
                "resource not found: use /v1/releases/{release_uuid} or /v1/releases/{repo}/{project}[/{release-id}]"
            ) from None
        found = await svc.get_by_id(release_id)
        require_repository(principal, found.repository)
        return Release.of(found)
    repo, rest_parts = _split_repo(parts)
    require_repository(principal, repo)
    if len(rest_parts) == 1:
        page = parse_page(limit, offset)
        return ReleaseList.of(await svc.list_releases(repo, rest_parts[0], page.limit, page.offset, cursor))
    if len(rest_parts) == 2:
        return Release.of(await svc.get(repo, rest_parts[0], rest_parts[1]))
    raise NotFound("resource not found")


@post(
    "/v1/releases/{rest:path}",
    opt={
        "permission": Permission.RELEASES_ALIAS,
        **path_forms(
            PathForm(
                _PROJECT + "/{release_id}/aliases",
                "Add an alias to a release (201 created or moved, 200 already there)",
                AliasResult,
                status=201,
                also=(200,),
                parameters=_PARAMETERS,
            )
        ),
    },
    operation_class=body_operation(AliasCreate, "`alias_type`: tag, branch or custom"),
    responses={
        201: response(AliasResult, "alias created or moved"),
        200: response(AliasResult, "already there"),
        **errors({409: "the alias names another release and cannot move (numeric and tag aliases never move)"}),
    },
)
async def add_alias(
    request: Request[Any, Any, Any], runtime: Runtime, rest: _REST, principal: Principal
) -> Response[AliasResult]:
    """Add a ``tag``, ``branch`` or ``custom`` alias to a release."""
    parts = _segments(request)
    repo, rest_parts = _split_repo(parts)
    require_repository(principal, repo)
    if len(rest_parts) != 3 or rest_parts[2] != "aliases":
        raise NotFound("resource not found: POST /v1/releases/{repo}/{project}/{release-id}/aliases")
    data = decode_body(await request.body(), AliasCreate)
    change = await _service(runtime).add_alias(repo, rest_parts[0], rest_parts[1], data.alias, data.alias_type)
    return Response(AliasResult.of(change), status_code=200 if change.action == "noop" else 201)


@delete(
    "/v1/releases/{rest:path}",
    opt={
        "permission": Permission.RELEASES_ALIAS,
        **path_forms(
            PathForm(
                _PROJECT + "/{release_id}/aliases/{alias}",
                "Remove a branch or custom alias",
                status=204,
                parameters=_PARAMETERS,
            )
        ),
    },
    status_code=HTTP_204_NO_CONTENT,
    responses=errors({409: "numeric and tag aliases are permanent"}),
)
async def remove_alias(request: Request[Any, Any, Any], runtime: Runtime, rest: _REST, principal: Principal) -> None:
    """Remove a ``branch`` or ``custom`` alias (numeric and tag aliases are permanent)."""
    parts = _segments(request)
    repo, rest_parts = _split_repo(parts)
    require_repository(principal, repo)
    if len(rest_parts) != 4 or rest_parts[2] != "aliases":
        raise NotFound("resource not found: DELETE /v1/releases/{repo}/{project}/{release-id}/aliases/{alias}")
    await _service(runtime).remove_alias(repo, rest_parts[0], rest_parts[1], rest_parts[3])


ROUTES: list[Any] = [create_release, search, read_releases, add_alias, remove_alias]
