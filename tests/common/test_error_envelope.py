"""Every error a client can meet comes as the spec's envelope {"error": {code, message, details}},
from the gateway and from the services alike, and a 500 leaks nothing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from forge_dev.testing import Platform


def envelope(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    error: dict[str, Any] = body["error"]
    return error


async def test_400_names_the_field_from_a_real_service(platform: Platform) -> None:
    headers = platform.headers(f"dev-{uuid.uuid4().hex[:6]}@example.com", "developer")
    run = {"repository": "o/r", "branch": "main", "commit_sha": "a" * 40, "trigger_type": "manual"}
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.post("/v1/runs", json={**run, "trigger_type": "sometimes"}, headers=headers)
        assert envelope(resp, 400, "invalid_request")["details"] == {"field": "trigger_type"}
        resp = await client.post("/v1/runs", json={k: v for k, v in run.items() if k != "commit_sha"}, headers=headers)
        assert envelope(resp, 400, "invalid_request")["details"] == {"field": "commit_sha"}
        resp = await client.post("/v1/runs", content=b"{not json", headers=headers)
        envelope(resp, 400, "invalid_request")


async def test_400_from_the_shared_app_shell_validation(platform: Platform, widgets: str) -> None:
    headers = platform.headers("dev@example.com", "developer")
    async with httpx.AsyncClient(base_url=widgets) as client:
        resp = await client.post("/v1/widgets", json={"name": "w", "size": "big"}, headers=headers)
        error = envelope(resp, 400, "invalid_request")
        assert error["details"]["field"] == "size"


async def test_401_and_403_from_a_service_itself(platform: Platform, widgets: str) -> None:
    async with httpx.AsyncClient(base_url=widgets) as client:
        envelope(await client.get("/v1/widgets"), 401, "authentication_failed")
        resp = await client.post(
            "/v1/widgets", json={"name": "w", "size": 1}, headers=platform.headers("v@x.io", "viewer")
        )
        error = envelope(resp, 403, "authorization_failed")
        assert error["details"] == {"required_permission": "runs:write", "roles": ["viewer"]}


async def test_404_for_unknown_routes_and_missing_resources(platform: Platform, widgets: str) -> None:
    headers = platform.headers("v@x.io", "viewer")
    async with httpx.AsyncClient() as client:
        envelope(await client.get(f"{widgets}/v1/nope", headers=headers), 404, "resource_not_found")
        envelope(await client.get(f"{widgets}/nope"), 404, "resource_not_found")
        error = envelope(await client.get(f"{widgets}/v1/widgets/w-9", headers=headers), 404, "resource_not_found")
        assert error["details"] == {"widget_id": "w-9"}
        envelope(await client.get(f"{platform.gateway_url}/v1/nope", headers=headers), 404, "resource_not_found")
        run = await client.get(f"{platform.gateway_url}/v1/runs/{uuid.uuid4()}", headers=headers)
        envelope(run, 404, "resource_not_found")


async def test_405_for_a_wrong_method(platform: Platform, widgets: str) -> None:
    headers = platform.headers("admin@x.io", "admin")
    async with httpx.AsyncClient() as client:
        envelope(await client.patch(f"{widgets}/v1/widgets", headers=headers), 405, "method_not_allowed")
        resp = await client.patch(f"{platform.gateway_url}/v1/runs", headers=headers)  # through the gateway
        envelope(resp, 405, "method_not_allowed")


async def test_409_conflict(platform: Platform, widgets: str) -> None:
    async with httpx.AsyncClient(base_url=widgets) as client:
        resp = await client.post(
            "/v1/widgets", json={"name": "taken", "size": 1}, headers=platform.headers("d@x.io", "developer")
        )
        assert envelope(resp, 409, "resource_conflict")["details"] == {"existing_id": "w-1"}


async def test_413_for_an_11_mb_body_at_the_service_too(platform: Platform, widgets: str) -> None:
    async with httpx.AsyncClient(base_url=widgets, timeout=30) as client:
        resp = await client.post(
            "/v1/widgets", content=b"x" * (11 * 1024 * 1024), headers=platform.headers("d@x.io", "developer")
        )
        envelope(resp, 413, "payload_too_large")


async def test_429_quota_exceeded(platform: Platform, widgets: str) -> None:
    async with httpx.AsyncClient(base_url=widgets) as client:
        resp = await client.post("/v1/quota", headers=platform.headers("d@x.io", "developer"))
        assert envelope(resp, 429, "limit_exceeded")["details"] == {"limit": 100}


async def test_500_leaks_no_stack_trace_or_sql(platform: Platform, widgets: str) -> None:
    async with httpx.AsyncClient(base_url=widgets) as client:
        resp = await client.get("/v1/crash", headers=platform.headers("v@x.io", "viewer"))
        error = envelope(resp, 500, "internal_error")
        assert error["message"] == "internal platform error"
        assert error["details"] == {}
        for leak in ("SELECT", "password", "Traceback", "secret", ".py", "RuntimeError"):
            assert leak not in resp.text
        assert resp.headers["x-request-id"]
