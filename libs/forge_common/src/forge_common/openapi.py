"""OpenAPI documentation of request bodies the routes decode themselves.

Routes decode their JSON bodies with :func:`forge_common.http.decode_body` (strict types, the
exact field of an error), so Litestar does not see a ``data`` parameter to document; :func:`body_operation` returns an
``operation_class`` that adds the request body from the msgspec Struct's JSON schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

__all__ = ["body_operation"]


def _schema(node: dict[str, Any], defs: dict[str, Any]) -> Schema:
    if "$ref" in node:
        return _schema(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in node:
        return Schema(any_of=[_schema(n, defs) for n in node["anyOf"]])
    kind = node.get("type")
    return Schema(
        type=OpenAPIType(kind) if isinstance(kind, str) else None,
        title=node.get("title"),
        description=node.get("description"),
        properties={k: _schema(v, defs) for k, v in node.get("properties", {}).items()} or None,
        required=node.get("required"),
        items=_schema(node["items"], defs) if "items" in node else None,
        default=node.get("default"),
    )


def body_operation(struct: type[msgspec.Struct], description: str) -> type[Operation]:
    (root,), components = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    schema = _schema(root, components)

    @dataclass
    class _WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=schema)}, description=description, required=True
            )

    return _WithBody
