"""The response limit (502 over FORGE_MAX_RESPONSE_BYTES) and its exception for streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import UPSTREAMS, start_gateway
from .upstreams import Server

MiB = 1024 * 1024
SMALL_LIMIT = 1 * MiB


def user() -> str:
    return f"resp-{uuid.uuid4().hex[:8]}@example.com"


def _streaming_app() -> web.Application:
    """Chunked answers of a requested size, as plain JSON, as an event stream, or as step logs."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        resp = web.StreamResponse(headers={"Content-Type": request.query.get("type", "application/json")})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        piece = b"x" * (64 * 1024)
        sent = 0
        while sent < size:
            n = min(len(piece), size - sent)
            await resp.write(piece[:n])
            sent += n
        await resp.write_eof()
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", chunked)
    return app


@pytest.fixture(scope="module")
async def small_limit_gateway(platform: Platform) -> AsyncIterator[Process]:
    server = await Server(_streaming_app()).start()
    env = {f"FORGE_{name.upper()}_URL": server.url for name in UPSTREAMS}
    proc = await start_gateway(platform, {**env, "FORGE_MAX_RESPONSE_BYTES": str(SMALL_LIMIT)})
    yield proc
    proc.stop()
    await server.stop()


async def test_51_mib_upstream_response_is_refused_with_502(platform: Platform, echo_gateway: Process) -> None:
    headers = platform.headers(user(), "viewer")
    async with httpx.AsyncClient(base_url=echo_gateway.url, timeout=60) as client:
        resp = await client.get(f"/v1/runs/big?bytes={51 * MiB}", headers=headers)
        assert resp.status_code == 502, resp.text[:200]
        error = resp.json()["error"]
        assert error["code"] == "bad_gateway"
        assert error["details"] == {"service": "pipeline", "limit": 50 * MiB}
        assert str(50 * MiB) in error["message"]
        # Just under the limit still passes, whole.
        resp = await client.get(f"/v1/runs/big?bytes={2 * MiB}", headers=headers)
        assert resp.status_code == 200
        assert len(resp.content) == 2 * MiB


async def test_chunked_response_over_the_limit_is_cut_off(platform: Platform, small_limit_gateway: Process) -> None:
    headers = platform.headers(user(), "viewer")
    async with httpx.AsyncClient(base_url=small_limit_gateway.url, timeout=60) as client:
        resp = await client.get(f"/v1/runs/r1?bytes={SMALL_LIMIT}", headers=headers)
        assert resp.status_code == 200
        assert len(resp.content) == SMALL_LIMIT
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"/v1/runs/r1?bytes={SMALL_LIMIT + 1}", headers=headers)


async def test_streams_are_exempt(platform: Platform, small_limit_gateway: Process) -> None:
    headers = platform.headers(user(), "viewer")
    size = 3 * SMALL_LIMIT
    async with httpx.AsyncClient(base_url=small_limit_gateway.url, timeout=60) as client:
        resp = await client.get(f"/v1/runs/r1/events?bytes={size}&type=text/event-stream", headers=headers)
        assert resp.status_code == 200
        assert len(resp.content) == size
        resp = await client.get(f"/v1/steps/s1/logs?bytes={size}&type=text/plain", headers=headers)
        assert resp.status_code == 200
        assert len(resp.content) == size
