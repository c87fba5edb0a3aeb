"""The committed contract documents: current, valid, complete, and their examples true to them."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from forge_common.asyncapi import asyncapi_document
from forge_common.events import EVENT_TYPES, EventData
from forge_gateway.contract import ASYNCAPI_PATH, OPENAPI_PATH, SERVICES, build_openapi, render

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "stale: regenerate with `.venv/bin/python -m forge_gateway.contract` and commit the result"
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    return document


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(ASYNCAPI_PATH.read_text())
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_committed_openapi_is_what_the_routes_generate() -> None:
    assert OPENAPI_PATH.read_text() == render(build_openapi()), REGENERATE


def test_committed_asyncapi_is_what_the_events_generate() -> None:
    assert ASYNCAPI_PATH == ROOT / "docs" / "asyncapi.json"
    assert ASYNCAPI_PATH.read_text() == render(asyncapi_document()), REGENERATE


def test_openapi_is_a_valid_3_1_document(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"] == "3.1.0"
    validate(openapi)


def test_every_route_of_every_service_is_documented_with_real_paths(openapi: dict[str, Any]) -> None:
    documented = {(method.upper(), path) for path, method, _ in _operations(openapi)}
    for path, _, _ in _operations(openapi):
        assert "{rest}" not in path, f"catch-all placeholder documented: {path}"
        assert "{path}" not in path, f"catch-all placeholder documented: {path}"
    expected = {
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/{run_id}"),
        ("DELETE", "/v1/runs/{run_id}"),
        ("PUT", "/v1/tasks/{task_id}/status"),
        ("PUT", "/v1/steps/{step_id}/status"),
        ("PUT", "/v1/tasks/{task_id}/report"),
        ("POST", "/v1/webhooks/github"),
        ("POST", "/v1/releases"),
        ("GET", "/v1/releases/{release_uuid}"),
        ("GET", "/v1/releases/{owner}/{name}/{project}"),
        ("GET", "/v1/releases/{owner}/{name}/{project}/{release_id}"),
        ("POST", "/v1/releases/{owner}/{name}/{project}/{release_id}/aliases"),
        ("DELETE", "/v1/releases/{owner}/{name}/{project}/{release_id}/aliases/{alias}"),
        ("POST", "/v1/deployments"),
        ("GET", "/v1/deployments/{environment}/{owner}/{name}/{project}"),
        ("GET", "/v1/deployments/{environment}/{owner}/{name}/{project}/history"),
        ("POST", "/v1/approvals"),
        ("GET", "/v1/approvals/{release_id}/{environment}"),
        ("GET", "/v1/approvals/check"),
        ("GET", "/v1/meta"),
        ("GET", "/v1/me"),
    }
    assert expected <= documented, sorted(expected - documented)
    # Every service's own routes (what Litestar serves) are in the merged document.
    for service in SERVICES:
        routes = importlib.import_module(f"forge_{service}.api").ROUTES
        for handler in routes:
            if handler.opt.get("openapi_paths"):
                continue
            path = handler.paths and next(iter(handler.paths))
            template = "/".join(
                "{" + part[1:-1].split(":")[0] + "}" if part.startswith("{") else part for part in path.split("/")
            )
            for method in handler.http_methods:
                assert (method, template) in documented, f"{service}: {method} {template} missing"


def test_internal_operations_are_tagged(openapi: dict[str, Any]) -> None:
    internal = {(m.upper(), p) for p, m, op in _operations(openapi) if "internal" in op.get("tags", [])}
    assert internal == {
        ("PUT", "/v1/tasks/{task_id}/status"),
        ("PUT", "/v1/steps/{step_id}/status"),
        ("PUT", "/v1/tasks/{task_id}/report"),
        ("GET", "/v1/approvals/check"),
        ("GET", "/v1/releases/{release_uuid}"),
    }


def test_every_error_is_the_envelope_and_every_operation_is_secured(openapi: dict[str, Any]) -> None:
    responses = openapi["components"]["responses"]
    assert openapi["components"]["securitySchemes"]["bearer"] == {
        **openapi["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert openapi["security"] == [{"bearer": []}]
    public = set()
    for path, method, operation in _operations(openapi):
        assert operation.get("operationId"), (method, path)
        assert operation.get("tags"), (method, path)
        for status, answer in operation["responses"].items():
            if int(status) < 400:
                continue
            if "$ref" in answer:
                answer = responses[answer["$ref"].rsplit("/", 1)[1]]
            schema = answer["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
        if operation.get("security") == []:
            public.add((method, path))
        elif path == "/v1/me":  # any valid token: no role to lack
            assert {"401", "429"} <= set(operation["responses"])
            assert "403" not in operation["responses"]
        else:
            assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
        if operation.get("requestBody"):
            assert {"400", "413"} <= set(operation["responses"]), (method, path)
    assert public == {
        ("post", "/v1/webhooks/github"),
        # RFC 8693 token exchange: the external identity token in the form body is the credential.
        ("post", "/v1/auth/token"),
        ("get", "/v1/meta"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    }


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # The schema resolved inside the whole document, so its $refs into #/components work.
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def _examples(media: dict[str, Any]) -> list[Any]:
    found = [media["example"]] if "example" in media else []
    found += [e["value"] for e in media.get("examples", {}).values()]
    return found


def test_openapi_examples_match_their_schemas(openapi: dict[str, Any]) -> None:
    with_body = 0
    for path, method, operation in _operations(openapi):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            examples = _examples(body)
            assert examples, f"{method} {path}: request body without an example"
            with_body += 1
            for example in examples:
                _validator(openapi, body["schema"]).validate(example)
        for status, answer in operation["responses"].items():
            media = answer.get("content", {}).get("application/json")
            if media is None or "$ref" in answer:
                continue
            for example in _examples(media):
                _validator(openapi, media["schema"]).validate(example)
            if status in ("200", "201") and path.startswith("/v1/") and "webhooks" not in path:
                assert _examples(media), f"{method} {path}: {status} without an example"
    assert with_body >= 8


def _published_event_types() -> set[str]:
    """Every event type a service can publish: the EventData classes defined anywhere in the
    platform's packages (imported here), since the outbox publishes nothing else on events.*."""
    for package in ("forge_common", *(f"forge_{s}" for s in SERVICES), "forge_worker"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            importlib.import_module(info.name)
    found: set[str] = set()
    pending: list[type[EventData]] = [EventData]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found.add(sub.event_type)
            pending.append(sub)
    return found


def test_every_published_event_type_is_in_the_asyncapi_document(asyncapi: dict[str, Any]) -> None:
    published = _published_event_types()
    assert published == set(EVENT_TYPES)
    channels = {channel["address"] for channel in asyncapi["channels"].values()}
    assert channels == {f"events.{event_type}" for event_type in published}
    # Nothing reaches an events.* subject except through forge_common.outbox.add_event (which
    # takes an EventData): no service builds such a subject itself.
    for source in ROOT.glob("services/*/src/**/*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("events."), f"{source}: publishes on {node.value!r} directly"


def test_asyncapi_messages_describe_the_envelope_and_their_examples_fit(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"].startswith("3.")
    for name, message in asyncapi["components"]["messages"].items():
        payload = message["payload"]
        schema = asyncapi["components"]["schemas"][payload["$ref"].rsplit("/", 1)[1]]
        assert schema["required"] == ["event_id", "event_type", "timestamp", "data"], name
        validator = _validator(asyncapi, payload)
        for example in message["examples"]:
            validator.validate(example["payload"])
            assert set(example["payload"]["data"]) == set(
                asyncapi["components"]["schemas"][schema["properties"]["data"]["$ref"].rsplit("/", 1)[1]]["properties"]
            ), f"{name}: the spec example lacks fields"
