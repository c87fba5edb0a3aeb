"""What the gateway forwards, what it strips, and how it fails when an upstream does."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import start_gateway
from .upstreams import close_delimited_server, garbage_server


def user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


@pytest.mark.parametrize(
    ("segment", "service"),
    [
        ("runs", "pipeline"),
        ("tasks", "pipeline"),
        ("steps", "pipeline"),
        ("webhooks", "pipeline"),
        ("releases", "release"),
        ("deployments", "deployment"),
        ("approvals", "approval"),
    ],
)
async def test_routes_by_first_path_segment(
    platform: Platform, echo_gateway: Process, segment: str, service: str
) -> None:
    headers = platform.headers(user(), "developer")
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.get(f"/v1/{segment}/a%2Fb/c", params={"repository": "o/r", "x": "1 2"}, headers=headers)
        assert resp.status_code == 200, resp.text
        echoed = resp.json()
        assert echoed["upstream"] == service
        assert echoed["method"] == "GET"
        assert echoed["path"] == f"/v1/{segment}/a%2Fb/c"  # percent-encoding kept as sent
        assert echoed["query"] == "repository=o%2Fr&x=1+2"
        resp = await client.post(f"/v1/{segment}", json={"hello": "world"}, headers=headers)
        assert resp.status_code == 200
        assert resp.json()["method"] == "POST"
        assert resp.json()["body_size"] == len(b'{"hello":"world"}')
        assert resp.json()["headers"]["content-type"] == "application/json"


async def test_forwards_token_request_id_trace_context_and_client_address(
    platform: Platform, echo_gateway: Process
) -> None:
    token = platform.token(user(), "viewer")
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{'1' * 16}-01"
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.get(
            "/v1/runs",
            headers={
                "Authorization": f"Bearer {token}",
                "X-Request-Id": "req-123",
                "traceparent": traceparent,
                "X-Forwarded-For": "203.0.113.7",
            },
        )
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == "req-123"
        seen = resp.json()["headers"]
        assert seen["authorization"] == f"Bearer {token}"
        assert seen["x-request-id"] == "req-123"
        version, seen_trace, parent, _flags = seen["traceparent"].split("-")
        assert (version, seen_trace) == ("00", trace_id)  # same trace ...
        assert parent != "1" * 16  # ... continued by the gateway's own span
        assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == echo_gateway.url.removeprefix("http://")
        assert resp.json()["header_names"].count("x-request-id") == 1

        # Without a request id or trace context the gateway makes both.
        resp = await client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
        rid = resp.headers["x-request-id"]
        assert len(rid) >= 16
        assert resp.json()["headers"]["x-request-id"] == rid
        assert len(resp.json()["headers"]["traceparent"].split("-")[1]) == 32


async def test_strips_hop_by_hop_headers_both_ways_and_keeps_no_cookies(
    platform: Platform, echo_gateway: Process
) -> None:
    headers = {
        **platform.headers(user(), "viewer"),
        "Connection": "keep-alive, X-Hop-Secret",
        "X-Hop-Secret": "for-the-gateway-only",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-End-To-End": "kept",
    }
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.get("/v1/releases/x", headers=headers)
        seen = resp.json()["headers"]
        assert "x-hop-secret" not in seen
        assert "proxy-authorization" not in seen
        assert seen["x-end-to-end"] == "kept"
        assert seen["host"] != echo_gateway.url.removeprefix("http://")  # the upstream's own host

        resp = await client.get("/v1/releases/cookie", headers=platform.headers(user(), "viewer"))
        assert resp.status_code == 201
        assert "keep-alive" not in resp.headers  # hop-by-hop from the upstream is dropped
        assert "session=secret-of-someone" in resp.headers["set-cookie"]  # end-to-end, passed on
        assert resp.headers["server"] == "uvicorn"  # one Server header: the gateway's, not two

    # A different client afterwards: the gateway must not have kept the cookie for it.
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.get("/v1/releases/x", headers=platform.headers(user(), "viewer"))
        assert "cookie" not in resp.json()["headers"]


async def test_streams_responses_and_passes_large_ones_through(platform: Platform, echo_gateway: Process) -> None:
    headers = platform.headers(user(), "viewer")
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        async with client.stream("GET", "/v1/runs/stream", params={"chunks": "20"}, headers=headers) as resp:
            assert resp.status_code == 200
            assert "content-length" not in resp.headers  # streamed, not buffered into one body
            assert resp.headers["transfer-encoding"] == "chunked"
            text = "".join([part async for part in resp.aiter_text()])
        assert text == "".join(f"chunk {i}\n" for i in range(20))

        resp = await client.get("/v1/runs/big", params={"bytes": str(3 * 1024 * 1024)}, headers=headers)
        assert resp.status_code == 200
        assert resp.headers["content-length"] == str(3 * 1024 * 1024)
        assert resp.content == b"x" * (3 * 1024 * 1024)


async def test_head_requests_and_keep_alive_reuse(platform: Platform, echo_gateway: Process) -> None:
    headers = platform.headers(user(), "viewer")
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        for _ in range(3):  # a HEAD must not leave the pooled upstream connection confused
            resp = await client.head("/v1/runs/big", params={"bytes": "5000"}, headers=headers)
            assert resp.status_code == 200
            assert resp.headers["content-length"] == "5000"
            assert resp.content == b""
            resp = await client.get("/v1/runs/big", params={"bytes": "5000"}, headers=headers)
            assert resp.content == b"x" * 5000


async def test_upstream_dying_mid_body(platform: Platform, echo_gateway: Process) -> None:
    headers = platform.headers(user(), "viewer")
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        # Up to 1 MiB the gateway reads the whole body before answering: a clean 502.
        resp = await client.get("/v1/runs/truncated", params={"length": "100000"}, headers=headers)
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "bad_gateway"
        # Larger bodies stream through: headers are out, so the client sees the connection cut.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get("/v1/runs/truncated", params={"length": str(5 * 1024 * 1024)}, headers=headers)
        # The gateway itself is fine afterwards.
        resp = await client.get("/v1/runs", headers=platform.headers(user(), "viewer"))
        assert resp.status_code == 200


async def test_upstream_status_and_body_are_passed_unchanged(platform: Platform, echo_gateway: Process) -> None:
    headers = {**platform.headers(user(), "viewer"), "X-Echo-Status": "409"}
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.get("/v1/approvals/abc", headers=headers)
        assert resp.status_code == 409
        assert resp.json()["upstream"] == "approval"
        assert "x-ratelimit-remaining" in resp.headers


async def test_slow_upstream_gets_504_envelope(platform: Platform, echo_gateway: Process) -> None:
    async with httpx.AsyncClient(base_url=echo_gateway.url, timeout=10) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await client.get("/v1/runs/slow", params={"seconds": "4"}, headers=platform.headers(user(), "viewer"))
        assert loop.time() - started < 3.5  # FORGE_UPSTREAM_TIMEOUT=1s on this gateway
        assert resp.status_code == 504
        error = resp.json()["error"]
        assert error["code"] == "gateway_timeout"
        assert error["details"] == {"service": "pipeline"}
        assert "x-request-id" in resp.headers


async def test_upstream_down_or_not_http_gives_502_envelope_and_degraded_readiness(platform: Platform) -> None:
    from forge_dev.stack import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    garbage, garbage_url = await garbage_server()
    old_style, old_style_url = await close_delimited_server()
    env = {f"FORGE_{n}_URL": dead for n in ("PIPELINE", "RELEASE")}
    env["FORGE_DEPLOYMENT_URL"] = garbage_url
    env["FORGE_APPROVAL_URL"] = old_style_url
    proc = await start_gateway(platform, env, wait=False)
    try:
        async with httpx.AsyncClient(base_url=proc.url) as client:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, platform.logs(proc.name)
                await asyncio.sleep(0.05)
            # The gateway itself is ready: a down service is reported, not a reason to take
            # every gateway replica out of its load balancer.
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["upstreams"] == "degraded"
            assert ready.json()["checks"]["release"].startswith("unavailable")
            resp = await client.post("/v1/releases", json={}, headers=platform.headers(user(), "developer"))
            assert resp.status_code == 502
            error = resp.json()["error"]
            assert error["code"] == "bad_gateway"
            assert error["details"]["service"] == "release"
            resp = await client.get("/v1/deployments/x", headers=platform.headers(user(), "viewer"))
            assert resp.status_code == 502
            assert resp.json()["error"]["message"] == "the deployment service sent an invalid answer"
            # A body delimited by the end of the connection is complete, not an error.
            resp = await client.get("/v1/approvals/x", headers=platform.headers(user(), "viewer"))
            assert resp.status_code == 200
            assert resp.text == "hello until close"
    finally:
        proc.stop()
        garbage.close()
        old_style.close()


async def test_webhook_path_needs_no_bearer_token(echo_gateway: Process) -> None:
    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.post(
            "/v1/webhooks/github", content=b'{"zen":"x"}', headers={"X-Hub-Signature-256": "sha256=00"}
        )
        assert resp.status_code == 200
        assert resp.json()["upstream"] == "pipeline"
        assert resp.json()["headers"]["x-hub-signature-256"] == "sha256=00"
        assert "x-ratelimit-limit" not in resp.headers
        # Only that one path: anything else under /v1/webhooks still needs a token.
        resp = await client.post("/v1/webhooks/other", content=b"{}")
        assert resp.status_code == 401
