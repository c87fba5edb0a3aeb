"""The OpenAPI side of a service's routes.

Litestar documents each route from its signature and its ``responses``; this module fills in what
it cannot see and turns a service's app into the document the gateway merges
(``forge_gateway.contract``):

* :func:`body_operation`: routes decode their JSON bodies with
  :func:`forge_common.http.decode_body` (strict types, the exact field of an error), so Litestar
  sees no ``data`` parameter; the ``operation_class`` it returns adds the request body from the
  msgspec Struct's JSON schema, with an example.
* :func:`response`: a ``ResponseSpec`` whose example is the Struct's ``example`` (from the spec).
* :class:`PathForm` / :func:`path_forms`: a catch-all route (``/v1/releases/{rest:path}``, which
  splits the raw path itself so that ``owner%2Fname`` and ``owner/name`` both work) declares the
  concrete paths it serves; :func:`service_document` documents those instead of the catch-all.
* :class:`ErrorEnvelope`: the spec's error envelope as a Struct, the schema of every error.
* :func:`event_stream`: a ``text/event-stream`` answer described event by event (Open API 3.1
  has ``schema`` describe one event: its ``id``, ``event`` and ``data`` fields, the JSON in
  ``data`` by ``contentMediaType``/``contentSchema``), which schemathesis checks event by event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec
from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.serialization import encode_json

from .http import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET

__all__ = [
    "ErrorDetail",
    "ErrorEnvelope",
    "PathForm",
    "body_operation",
    "errors",
    "event_stream",
    "internal",
    "path_forms",
    "response",
    "schema_components",
    "service_document",
]

_PATHS_KEY = "openapi_paths"
_INTERNAL_KEY = "openapi_internal"
_EVENTS_KEY = "openapi_events"
_EVENT_STREAM = "text/event-stream"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_TYPED_PARAM = re.compile(r"\{([^{}:]+):[^{}]+\}")
_PARAM = re.compile(r"\{([^{}]+)\}")


class ErrorDetail(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: dict[str, Any]


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    """``{"error": {"code", "message", "details"}}``: every 4xx and 5xx answer of the platform."""

    error: ErrorDetail
    example: ClassVar[dict[str, Any]] = {
        "error": {
            "code": "invalid_request",
            "message": "missing required field `commit_sha`",
            "details": {"field": "commit_sha"},
        }
    }


def schema_components(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """msgspec's JSON schemas of ``types`` with references into ``#/components/schemas``."""
    roots, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return list(roots), dict(components)


# JSON-schema keyword -> Litestar Schema field, for keywords whose value is a subschema (or a list/map of them).
_SUBSCHEMA = {"items": "items", "additionalProperties": "additional_properties", "not": "schema_not"}
_SUBSCHEMA_LISTS = {"anyOf": "any_of", "oneOf": "one_of", "allOf": "all_of", "prefixItems": "prefix_items"}
_SCALARS = {
    "title": "title",
    "description": "description",
    "default": "default",
    "enum": "enum",
    "const": "const",
    "required": "required",
    "examples": "examples",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
    "multipleOf": "multiple_of",
}
_FORMATS = {f.value for f in OpenAPIFormat}


def _schema(node: dict[str, Any] | bool, defs: dict[str, Any]) -> Schema | bool:
    """One msgspec JSON schema node as a Litestar :class:`Schema`, references inlined."""
    if isinstance(node, bool):
        return node
    if "$ref" in node:
        return _schema(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    kwargs: dict[str, Any] = {}
    kind = node.get("type")
    if isinstance(kind, str):
        kwargs["type"] = OpenAPIType(kind)
    elif isinstance(kind, list):
        kwargs["type"] = [OpenAPIType(k) for k in kind]
    if node.get("format") in _FORMATS:
        kwargs["format"] = OpenAPIFormat(node["format"])
    if "properties" in node:
        kwargs["properties"] = {k: _schema(v, defs) for k, v in node["properties"].items()}
    for key, name in _SUBSCHEMA.items():
        if key in node:
            kwargs[name] = _schema(node[key], defs)
    for key, name in _SUBSCHEMA_LISTS.items():
        if key in node:
            kwargs[name] = [_schema(n, defs) for n in node[key]]
    for key, name in _SCALARS.items():
        if key in node:
            kwargs[name] = node[key]
    return Schema(**kwargs)


def _example_of(struct: Any) -> Any:
    return getattr(struct, "example", None)


def body_operation(
    struct: type[msgspec.Struct],
    description: str,
    example: Any = None,
    required: bool = True,
    media_type: str = "application/json",
) -> type[Operation]:
    """An ``operation_class`` documenting ``struct`` as the request body, JSON unless
    ``media_type`` says otherwise (``application/x-www-form-urlencoded``: the Struct's fields
    are the form's fields).

    The example (``example`` or the Struct's ``example``) is added by :func:`service_document`:
    Litestar's rendering drops ``null`` values inside examples.
    """
    (root,), components = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    converted = _schema(root, components)
    if not isinstance(converted, Schema):
        raise TypeError(f"{struct.__name__}: a request body must be a JSON object")
    schema: Schema = converted
    sample = example if example is not None else _example_of(struct)

    @dataclass
    class _WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={media_type: OpenAPIMediaType(schema=schema)},
                description=description,
                required=required,
            )

    _WithBody.example = sample  # type: ignore[attr-defined]
    return _WithBody


def response(model: Any, description: str) -> ResponseSpec:
    """A documented answer; :func:`service_document` adds the model's ``example``."""
    return ResponseSpec(data_container=model, description=description, generate_examples=False)


def errors(statuses: dict[int, str]) -> dict[int, ResponseSpec]:
    """Route ``responses`` for the error statuses a route answers beyond the standard ones
    (those the merge adds everywhere: 400, 401, 403, 404 on a path with parameters, 413, 429,
    502, 503, 504); each is the error envelope, described."""
    return {
        status: ResponseSpec(data_container=ErrorEnvelope, description=description, generate_examples=False)
        for status, description in statuses.items()
    }


def _media_example(sample: Any) -> dict[str, Any]:
    return {"example": {"summary": "example", "value": sample}}


def _add_examples(handler: Any, operation: dict[str, Any]) -> None:
    # Litestar's own examples are random (polyfactory) unless a ResponseSpec says
    # generate_examples=False: a generated document must not change from one run to the next.
    for answer in operation.get("responses", {}).values():
        for media in answer.get("content", {}).values():
            media.pop("examples", None)
    sample = getattr(handler.operation_class, "example", None)
    for body in operation.get("requestBody", {}).get("content", {}).values():
        if sample is not None:
            body["example"] = sample
    for status, spec in (handler.responses or {}).items():
        sample = _example_of(spec.data_container)
        media = operation.get("responses", {}).get(str(status), {}).get("content", {}).get("application/json")
        if media is not None and sample is not None:
            media["examples"] = _media_example(sample)


@dataclass(frozen=True)
class PathForm:
    """One concrete path a catch-all route serves, documented in its place.

    ``query``: which of the route's query parameters apply to this form; ``parameters``: the
    descriptions of the form's path parameters; ``model``: the success body (None: no content).
    """

    path: str
    summary: str
    model: Any = None
    status: int = 200
    description: str = ""
    query: tuple[str, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    example: Any = None
    # Other success statuses with the same body (an alias that was already there: 200).
    also: tuple[int, ...] = ()


def path_forms(*forms: PathForm) -> dict[str, Any]:
    """Route ``opt`` entries naming the concrete paths of a catch-all route."""
    return {_PATHS_KEY: forms}


def event_stream(*events: tuple[str | None, Any]) -> dict[str, Any]:
    """Route ``opt`` entry: the events of its ``text/event-stream`` answer, as ``(event name,
    type of the JSON in data)`` pairs (a name of ``None``: any ``event:``; a type that is a
    tuple: any of those types)."""
    return {_EVENTS_KEY: events}


def _event_schema(events: tuple[tuple[str | None, Any], ...], components: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event: a numeric ``id``, the ``event`` name, the JSON of ``data``."""
    variants = []
    for name, data in events:
        kinds = list(data) if isinstance(data, tuple) else [data]
        refs, defs = schema_components(kinds)
        for key, schema in defs.items():
            components.setdefault(key, schema)
        content = refs[0] if len(refs) == 1 else {"anyOf": refs}
        variant: dict[str, Any] = {
            "properties": {"data": {"contentMediaType": "application/json", "contentSchema": content}}
        }
        if name is not None:
            variant["properties"]["event"] = {"const": name}
        variants.append(variant)
    return {
        "type": "object",
        "description": "one event: `id:`, `event:` and `data:` lines (comments, `: heartbeat`, are not events)",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "event": {"type": "string"},
            "data": {"type": "string"},
        },
        "required": ["id", "event", "data"],
        **({"oneOf": variants} if len(variants) > 1 else {"allOf": variants}),
    }


def internal() -> dict[str, Any]:
    """Route ``opt`` entry: the operation is for workers and services, not for users."""
    return {_INTERNAL_KEY: True}


# Routes declare these as ``str | None`` so that forge_common.http.parse_page, not Litestar, judges
# them; the document says what parse_page accepts.
_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
}


def _tidy_parameters(operation: dict[str, Any]) -> None:
    """Query and header parameters: the documented schema of the shared ones; an optional
    ``str | None`` is just an optional string (a query string or a header cannot carry a JSON
    null), with what the parameter's ``schema_extra`` says (a ``type``, bounds, a pattern)."""
    for parameter in operation.get("parameters", []):
        if parameter.get("in") not in ("query", "header"):
            continue
        schema = parameter.get("schema", {})
        options = schema.get("oneOf") or schema.get("anyOf")
        if parameter["in"] == "query" and parameter["name"] in _QUERY_SCHEMAS:
            parameter["schema"] = dict(_QUERY_SCHEMAS[parameter["name"]])
        elif options:
            rest = [o for o in options if o.get("type") != "null"]
            if len(rest) == 1:
                extra = {k: v for k, v in schema.items() if k not in ("oneOf", "anyOf", "description")}
                parameter["schema"] = {**rest[0], **extra}
        for key in ("deprecated", "allowEmptyValue", "allowReserved"):
            if parameter.get(key) is False:
                del parameter[key]


def _openapi_path(template: str) -> str:
    return _TYPED_PARAM.sub(r"{\1}", template)


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", _PARAM.sub(r"by_\1", path)) if w and w != "v1"]
    return method + "".join(w[:1].upper() + w[1:] for w in words)


def _form_operation(method: str, base: dict[str, Any], form: PathForm, components: dict[str, Any]) -> dict[str, Any]:
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            **({"description": form.parameters[name]} if name in form.parameters else {}),
        }
        for name in _PARAM.findall(form.path)
    ]
    parameters += [p for p in base.get("parameters", []) if p.get("in") != "path" and p["name"] in form.query]
    success: dict[str, Any] = {"description": form.summary}
    if form.model is not None:
        (root,), defs = schema_components([form.model])
        for name, schema in defs.items():
            components.setdefault(name, schema)
        media: dict[str, Any] = {"schema": root}
        sample = form.example if form.example is not None else _example_of(form.model)
        if sample is not None:
            media["examples"] = _media_example(sample)
        success["content"] = {"application/json": media}
    operation: dict[str, Any] = {
        "summary": form.summary,
        **({"description": form.description} if form.description else {}),
        "operationId": _operation_id(method, form.path),
        "parameters": parameters,
        **({"requestBody": base["requestBody"]} if "requestBody" in base else {}),
        "responses": {
            **{status: answer for status, answer in base.get("responses", {}).items() if int(status) >= 400},
            **{str(status): success for status in (form.status, *form.also)},
        },
    }
    if form.internal:
        operation[_INTERNAL_KEY] = True
    return operation


def service_document(app: Litestar) -> dict[str, Any]:
    """The service's OpenAPI document as the gateway merges it.

    Catch-all routes are replaced by the :class:`PathForm` s they declare; public routes
    (``opt={"public": True}``) get ``security: []``; internal ones are marked with an
    ``openapi_internal`` flag the merge turns into a tag.
    """
    document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
    paths: dict[str, Any] = document.setdefault("paths", {})
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    replaced: dict[str, dict[str, Any]] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not handler.resolve_include_in_schema():
                continue
            path = _openapi_path(route.path)
            for method in sorted(m.lower() for m in handler.http_methods):
                operation = paths.get(path, {}).get(method)
                if operation is None:
                    continue
                _tidy_parameters(operation)
                _add_examples(handler, operation)
                if handler.opt.get("public"):
                    operation["security"] = []
                if handler.opt.get(_INTERNAL_KEY):
                    operation[_INTERNAL_KEY] = True
                if handler.opt.get(_EVENTS_KEY):
                    for answer in operation.get("responses", {}).values():
                        media = answer.get("content", {}).get(_EVENT_STREAM)
                        if media is not None:
                            media["schema"] = _event_schema(handler.opt[_EVENTS_KEY], components)
                for form in handler.opt.get(_PATHS_KEY, ()):
                    replaced.setdefault(form.path, {})[method] = _form_operation(method, operation, form, components)
                if handler.opt.get(_PATHS_KEY):
                    del paths[path][method]
    for path, item in list(paths.items()):
        if not any(key in item for key in _METHODS):
            del paths[path]
    for path, operations in replaced.items():
        paths.setdefault(path, {}).update(operations)
    return document
