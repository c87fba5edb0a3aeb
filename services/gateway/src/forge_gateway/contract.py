"""The public API contract: one OpenAPI 3.1 document for everything the gateway serves.

Generated, never edited by hand: each service's Litestar app documents its own routes and msgspec
schemas (:func:`forge_common.openapi.service_document`); this module merges them and adds what
the gateway itself does to every request: the bearer scheme, the error envelope on every error
status, the limits (401, 403, 413, 429, 502, 503, 504) and the headers it sets.

    python -m forge_gateway.contract           # rewrite openapi.json and docs/asyncapi.json
    python -m forge_gateway.contract --check   # exit 1 if either committed copy is stale

The gateway serves the committed ``openapi.json`` (its image carries no service code); it is
regenerated after any change to a route or a schema, and ``tests/contract`` fails while it is stale.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from litestar.exceptions import LitestarDeprecationWarning

from forge_common.asyncapi import asyncapi_document
from forge_common.openapi import ErrorEnvelope, schema_components, service_document

__all__ = ["ASYNCAPI_PATH", "OPENAPI_PATH", "SERVICES", "ContractError", "build_openapi", "main", "render"]

SERVICES = ("pipeline", "release", "deployment", "approval")
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
# The repository's docs/ (the package is installed editable from services/gateway/src).
ASYNCAPI_PATH = Path(__file__).resolve().parents[4] / "docs" / "asyncapi.json"

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_ERROR_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}
_INTERNAL = "openapi_internal"
_API_PREFIX = "/v1/"
_HEALTH = ("/healthz", "/readyz")

_DESCRIPTION = """\
The public API of the Forge CI/CD platform, as served by its gateway (`make run`: \
`http://127.0.0.1:8080`).

**Authentication.** Every operation needs `Authorization: Bearer <access token>` from the \
platform's Keycloak realm (issuer and audience: `GET /v1/meta`), except where an operation says \
otherwise. Roles come from `realm_access.roles`: `viewer` may read, `developer` may also create \
and cancel runs, releases and deployments, `approver` may approve, `admin` may do everything, \
and `worker` service accounts may call the operations tagged `internal`. `GET /v1/me` says who \
a token is (subject, names, roles, repository, expiry), answered by the gateway alone.

**Repositories in paths.** `{owner}/{name}` is a repository (`mycompany/myrepo`). It may be \
sent as two segments, as the paths show, or percent-encoded as one (`mycompany%2Fmyrepo`).

**Errors.** Every 4xx and 5xx answer, including the gateway's own (unknown route, 413, 429, \
502, 504), is the envelope `{"error": {"code", "message", "details"}}`; for a bad parameter or \
body field `details.field` names it.

**Limits.** 1000 requests per minute per user (`X-RateLimit-*` headers; `429` with \
`Retry-After`), bodies up to 10 MiB, answers up to 50 MiB.

**Versions.** Within `/v1` changes are additive only; clients ignore fields they do not know. \
Deprecated operations carry `Deprecation`, `Sunset` and `Link` headers six months before removal \
(docs/api.md). The events are described by the AsyncAPI document at `/schema/asyncapi.json`."""

_TAGS = [
    {"name": "pipeline", "description": "Pipeline runs: phases, tasks, steps and their logs"},
    {"name": "release", "description": "Releases: numbered, immutable snapshots of a project at a commit"},
    {"name": "deployment", "description": "Deployments of releases to dev, staging and production through GitOps"},
    {"name": "approval", "description": "Approvals of releases for environments (production needs one)"},
    {"name": "gateway", "description": "What the gateway answers itself: discovery, who the caller is, health"},
    {
        "name": "auth",
        "description": "Workload identity: a CI job's OIDC token exchanged for a short-lived Forge token "
        "(RFC 8693, answered by the gateway)",
    },
    {"name": "internal", "description": "For workers and services (service-account tokens); users get 403"},
]

_HEADERS: dict[str, Any] = {
    "X-Request-Id": {
        "description": "the request's id (yours from `X-Request-Id`, else a new one); quote it in reports",
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {"description": "requests allowed per window", "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "requests left in the window", "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {
        "description": "Unix time (s) when the oldest counted request leaves the window",
        "schema": {"type": "integer"},
    },
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}},
}


class ContractError(Exception):
    """Two services document the same operation or two different schemas under one name."""


# Responses the gateway and the shared service shell give on any operation of the kind named:
# status -> (component name, kind of operation it applies to, description).
_STANDARD = {
    "400": ("BadRequest", "parameters", "invalid request: `details.field` names the parameter or body field at fault"),
    "401": ("Unauthorized", "authenticated", "missing, expired or invalid bearer token (`WWW-Authenticate: Bearer`)"),
    "403": ("Forbidden", "authenticated", "the token's roles do not allow this operation"),
    "404": ("NotFound", "path parameters", "no such resource"),
    "409": ("Conflict", "never", "the resource's state does not allow this; `message` says why"),
    "413": ("PayloadTooLarge", "body", "request body larger than the gateway's limit (10 MiB by default)"),
    "429": ("TooManyRequests", "authenticated", "rate limit or concurrent-request limit of the user exceeded"),
    "502": ("BadGateway", "proxied", "the service behind the gateway is unreachable or its answer is too large"),
    "503": ("ServiceUnavailable", "proxied", "a dependency (database, NATS) is unavailable; retry after `Retry-After`"),
    "504": ("GatewayTimeout", "proxied", "the service behind the gateway did not answer in time"),
}
# Descriptions that say nothing more than the standard response (Litestar's default 400, ours).
_GENERIC = frozenset({"error envelope", "Bad request syntax or unsupported method"})
_RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-Id", *names)}


def _standard_responses() -> dict[str, Any]:
    responses = {}
    for status, (name, _, description) in _STANDARD.items():
        extra: tuple[str, ...] = ()
        if status == "429":
            extra = (*_RATE_HEADERS, "Retry-After")
        elif status == "503":
            extra = ("Retry-After",)
        responses[name] = {
            "description": description,
            "headers": _header_refs(*extra),
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
    return responses


def _applies(kind: str, path: str, operation: dict[str, Any], proxied: bool) -> bool:
    authenticated = operation.get("security") != []
    return {
        "parameters": bool(operation.get("parameters") or operation.get("requestBody")),
        "authenticated": authenticated,
        "path parameters": "{" in path,
        "body": "requestBody" in operation,
        "proxied": proxied,
        "never": False,
    }[kind]


def _complete(path: str, operation: dict[str, Any], proxied: bool) -> None:
    """The error envelope on every error status, the gateway's statuses, its headers."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    # Every authenticated request is counted against its user's rate limit, proxied or answered
    # by the gateway itself (GET /v1/me); public ones are not.
    limited = operation.get("security") != []
    for status, answer in list(responses.items()):
        if int(status) >= 400:
            if status in _STANDARD and answer.get("description") in _GENERIC:
                responses[status] = {"$ref": f"#/components/responses/{_STANDARD[status][0]}"}
                continue
            answer["content"] = {"application/json": {"schema": _ERROR_REF}}
            answer["headers"] = _header_refs()
        else:
            answer["headers"] = _header_refs(*(_RATE_HEADERS if limited else ()))
    for status, (name, kind, _) in _STANDARD.items():
        if status not in responses and _applies(kind, path, operation, proxied):
            responses[status] = {"$ref": f"#/components/responses/{name}"}
    operation["responses"] = dict(sorted(responses.items()))


def _gateway_document() -> dict[str, Any]:
    """What the gateway answers itself: its Litestar app's ``/v1`` operations and health, and the
    operations its proxy answers (``GET /v1/me``, documented by a handler of their own).
    ``/v1/meta`` and health need no token; any other needs the bearer token unless its handler
    says ``opt={"public": True}``."""
    from litestar import Litestar

    from .app import META_PATH, TOKEN_PATH, create_app
    from .me import ME_PATH, documentation
    from .settings import Settings

    document = service_document(_quietly(create_app, Settings()).rest)
    local = service_document(Litestar(route_handlers=[documentation()]))
    _merge_schemas(document["components"].setdefault("schemas", {}), local["components"].get("schemas", {}), "gateway")
    document["paths"].update(local["paths"])
    paths = {}
    for path, item in document["paths"].items():
        if not path.startswith(_API_PREFIX) and path not in _HEALTH:
            continue
        for operation in item.values():
            operation["tags"] = ["auth"] if path == TOKEN_PATH else ["gateway"]
            if path == META_PATH or path in _HEALTH:
                operation["security"] = []
            if operation.get("deprecated") is False:
                del operation["deprecated"]
            _complete(path, operation, proxied=False)
            if path == ME_PATH:
                del operation["responses"]["403"]  # any valid token may call it: no role is checked
        paths[path] = item
    document["paths"] = paths
    return document


def _merge_schemas(into: dict[str, Any], schemas: dict[str, Any], service: str) -> None:
    for name, schema in schemas.items():
        if name in into and into[name] != schema:
            raise ContractError(f"{service}: a different schema named {name!r} exists already; rename one")
        into[name] = schema


def _collect(schemas: dict[str, Any], node: Any, used: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in used:
                used.add(name)
                _collect(schemas, schemas.get(name), used)
        for value in node.values():
            _collect(schemas, value, used)
    elif isinstance(node, list):
        for value in node:
            _collect(schemas, value, used)


def _quietly(create_app: Any, settings: Any) -> Any:
    with warnings.catch_warnings():
        # Litestar 2.25 asks for ``NamedDependency[...]`` / ``FromPath[...]`` in handler
        # signatures (a Litestar 3 change for the apps' code, not the contract's concern).
        warnings.simplefilter("ignore", LitestarDeprecationWarning)
        return create_app(settings)


def _service_documents() -> dict[str, dict[str, Any]]:
    documents = {}
    for service in SERVICES:
        app_module = importlib.import_module(f"forge_{service}.app")
        settings = importlib.import_module(f"forge_{service}.settings").Settings()
        documents[service] = service_document(_quietly(app_module.create_app, settings))
    return documents


def _merge_services(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    for service, service_doc in _service_documents().items():
        _merge_schemas(schemas, service_doc.get("components", {}).get("schemas", {}), service)
        for path, item in service_doc["paths"].items():
            for method, operation in item.items():
                if method not in _METHODS:
                    continue
                if method in paths.get(path, {}):
                    raise ContractError(f"{method.upper()} {path} is documented by two services")
                internal = operation.pop(_INTERNAL, False)
                operation["tags"] = [service, "internal"] if internal else [service]
                if operation.get("deprecated") is False:
                    del operation["deprecated"]
                _complete(path, operation, proxied=True)
                paths.setdefault(path, {})[method] = operation


def build_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    _merge_services(paths, schemas)
    gateway = _gateway_document()
    _merge_schemas(schemas, gateway.get("components", {}).get("schemas", {}), "gateway")
    for path, item in gateway["paths"].items():
        if path in paths:
            raise ContractError(f"{path} is served by the gateway itself and by a service")
        paths[path] = item
    _, error_schemas = schema_components([ErrorEnvelope])
    error_schemas["ErrorEnvelope"]["examples"] = [ErrorEnvelope.example]
    schemas.update(error_schemas)  # the same Structs as a service's responses name: msgspec's rendering wins
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Forge API",
            "version": "1.0.0",
            "description": _DESCRIPTION,
        },
        "servers": [{"url": "/", "description": "this gateway"}],
        "tags": _TAGS,
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a Keycloak access token of the `forge` realm (`forge login`, "
                    "or `forge dev token` on a dev platform)",
                }
            },
            "headers": _HEADERS,
            "responses": _standard_responses(),
        },
    }
    used: set[str] = set()
    _collect(schemas, document, used)
    document["components"]["schemas"] = {name: schemas[name] for name in sorted(used)}
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _targets() -> dict[Path, str]:
    return {
        OPENAPI_PATH: render(build_openapi()),
        ASYNCAPI_PATH: render(asyncapi_document()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forge_gateway.contract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed document is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in _targets().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")  # noqa: T201 - a command-line tool
    if stale:
        print(  # noqa: T201
            "stale: " + ", ".join(str(p) for p in stale) + "; run `python -m forge_gateway.contract`", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
