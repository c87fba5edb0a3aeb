"""The gateway's own endpoints and errors: health, readiness, metrics, OpenAPI, 404/405."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from forge_dev.testing import Platform


async def test_health_readiness_metrics_and_schema(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == dict.fromkeys(("pipeline", "release", "deployment", "approval"), "ok")

        await client.get("/v1/releases/x")  # at least one proxied request to count
        text = (await client.get("/metrics")).text
        assert 'forge_http_requests_total{method="GET",route="/v1/releases",service="gateway",status="401"}' in text
        assert "forge_http_request_duration_seconds_bucket" in text

        schema = (await client.get("/schema/openapi.json")).json()
        assert schema["info"]["title"] == "Forge API"
        assert "/v1/runs/{run_id}" in schema["paths"]
        assert schema["paths"]["/v1/webhooks/github"]["post"]["security"] == []


async def test_unknown_routes_and_methods_are_envelopes(platform: Platform) -> None:
    headers = platform.headers("someone@example.com", "viewer")
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        for path in ("/v1/nothing-here", "/v1", "/v1/", "/v2/runs"):
            resp = await client.get(path, headers=headers)
            assert resp.status_code == 404, path
            assert resp.json()["error"]["code"] == "resource_not_found"
            assert "x-request-id" in resp.headers
        resp = await client.get("/v1/nothing-here", headers=headers)
        assert resp.json()["error"]["details"] == {"path": "/v1/nothing-here"}
        # Without a token an unknown /v1 path is a 401: nothing under /v1 is probed anonymously.
        assert (await client.get("/v1/nothing-here")).status_code == 401

        resp = await client.post("/healthz")
        assert resp.status_code == 405
        assert resp.json()["error"]["code"] == "method_not_allowed"


async def test_access_log_line_per_request_with_ids(platform: Platform) -> None:
    rid = f"log-{uuid.uuid4().hex}"
    trace_id = uuid.uuid4().hex
    headers = {
        **platform.headers("logged@example.com", "viewer"),
        "X-Request-Id": rid,
        "traceparent": f"00-{trace_id}-{'2' * 16}-01",
    }
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get("/v1/releases/nothing-here", headers=headers)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # lines are flushed in batches, within 50 ms
        lines = [json.loads(line) for line in platform.logs("gateway").splitlines() if rid in line]
        if lines or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(lines) == 1
    line = lines[0]
    assert line["message"] == "http.request"
    assert line["service"] == "gateway"
    assert line["level"] == "info"
    assert line["trace_id"] == trace_id
    assert line["user"] == "logged@example.com"
    assert line["upstream"] == "release"
    assert line["status"] == resp.status_code
    assert line["path"] == "/v1/releases/nothing-here"
    assert line["duration_ms"] > 0
