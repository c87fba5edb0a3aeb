"""Body-size limit (413, enforced while streaming) and the per-user rate limit (429)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import httpx

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import start_gateway, upstream_env
from .upstreams import Server

MiB = 1024 * 1024
LIMIT = 10 * MiB


def user() -> str:
    return f"limits-{uuid.uuid4().hex[:8]}@example.com"


async def chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"a" * n


def assert_413(resp: httpx.Response) -> None:
    assert resp.status_code == 413, resp.text[:200]
    error = resp.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["details"] == {"limit": LIMIT}


async def test_11_mb_body_is_413_before_it_reaches_a_service(platform: Platform) -> None:
    headers = platform.headers(user(), "developer")
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        # Declared length over the limit: refused from the headers alone.
        resp = await client.post("/v1/releases", content=b"a" * (11 * MiB), headers=headers)
        assert_413(resp)
        # Chunked, no declared length: counted as it streams, refused once past the limit.
        resp = await client.post("/v1/releases", content=chunks(11 * MiB), headers=headers)
        assert_413(resp)


async def test_bodies_up_to_the_limit_stream_through_intact(platform: Platform, echo_gateway: Process) -> None:
    headers = platform.headers(user(), "developer")
    payload = bytes(range(256)) * (LIMIT // 256)  # exactly the limit
    async with httpx.AsyncClient(base_url=echo_gateway.url, timeout=30) as client:
        resp = await client.put("/v1/steps/s1/blob", content=payload, headers=headers)
        assert resp.status_code == 200, resp.text[:200]
        assert resp.json()["body_size"] == LIMIT
        assert resp.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert resp.json()["headers"]["content-length"] == str(LIMIT)

        resp = await client.post("/v1/runs", content=chunks(3 * MiB), headers=headers)
        assert resp.status_code == 200
        assert resp.json()["chunked"] is True
        assert resp.json()["body_size"] == 3 * MiB

        resp = await client.put("/v1/steps/s1/blob", content=payload + b"!", headers=headers)
        assert_413(resp)
        resp = await client.post("/v1/runs", content=chunks(LIMIT + 1), headers=headers)
        assert_413(resp)


async def test_1001st_request_in_a_minute_is_429(platform: Platform, echo_gateway: Process) -> None:
    sub = user()
    headers = platform.headers(sub, "viewer")
    remaining: list[int] = []
    url = f"{echo_gateway.url}/v1/runs?repository=o/r"
    # aiohttp's client: a quarter of httpx's CPU per request, so 1000 requests stay quick.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200
                    assert resp.headers["x-ratelimit-limit"] == "1000"
                    remaining.append(int(resp.headers["x-ratelimit-remaining"]))

        started = time.time()
        await asyncio.gather(*(worker(125) for _ in range(8)))
        assert sorted(remaining) == list(range(1000))  # every request counted exactly once

    async with httpx.AsyncClient(base_url=echo_gateway.url) as client:
        resp = await client.get("/v1/runs", params={"repository": "o/r"}, headers=headers)
        assert resp.status_code == 429
        error = resp.json()["error"]
        assert error["code"] == "rate_limited"
        assert error["details"]["limit"] == 1000
        retry_after = int(resp.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert resp.headers["x-ratelimit-limit"] == "1000"
        assert resp.headers["x-ratelimit-remaining"] == "0"
        reset = int(resp.headers["x-ratelimit-reset"])
        assert started < reset <= started + 62
        # A refused request is not counted, and other users are not affected.
        again = await client.get("/v1/runs", headers=headers)
        assert again.status_code == 429
        other = await client.get("/v1/runs", headers=platform.headers(user(), "viewer"))
        assert other.status_code == 200
        assert other.headers["x-ratelimit-remaining"] == "999"


async def test_window_slides_requests_allowed_again_after_retry_after(
    platform: Platform, echo_servers: dict[str, Server]
) -> None:
    gateway = await start_gateway(
        platform, {**upstream_env(echo_servers), "FORGE_RATE_LIMIT": "3", "FORGE_RATE_LIMIT_WINDOW": "1s"}
    )
    headers = platform.headers(user(), "viewer")
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            seen = [(await client.get("/v1/releases", headers=headers)) for _ in range(3)]
            assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0"]
            refused = await client.get("/v1/releases", headers=headers)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            while (resp := await client.get("/v1/releases", headers=headers)).status_code == 429:
                assert loop.time() < deadline, "window never slid"
                await asyncio.sleep(0.05)
            assert resp.status_code == 200
    finally:
        gateway.stop()


async def test_a_client_that_stops_sending_its_body_gets_408(
    platform: Platform, echo_servers: dict[str, Server]
) -> None:
    gateway = await start_gateway(platform, {**upstream_env(echo_servers), "FORGE_CLIENT_IDLE_TIMEOUT": "1s"})
    try:
        host, _, port = gateway.url.removeprefix("http://").partition(":")
        token = platform.token(user(), "developer")
        for declared in (1000, 1024 * 1024):  # read whole before forwarding / streamed through
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST /v1/runs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{".encode()
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            assert head.startswith("http/1.1 408"), head
            assert "connection: close" in head
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            error = json.loads(await reader.readexactly(length))["error"]
            assert error["code"] == "request_timeout"
            assert error["details"]["idle_timeout"] == 1.0
            assert await reader.read() == b""  # and the connection is closed
            writer.close()
    finally:
        gateway.stop()
