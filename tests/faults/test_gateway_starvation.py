"""512 slow uploads cannot starve the gateway: other users' requests still succeed.

Real sockets on loopback against a real gateway process in front of a real (echo) upstream.
The uploads declare 1 MiB bodies (so they stream through) and then trickle a byte at a time.
Each one ends in a clear envelope: 429 (per-user concurrency cap), 503 with Retry-After (no
slot for a streamed upload within the bounded wait) or 408 (body not arriving in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform
from tests.gateway.upstreams import Server, echo_app

UPLOADS = 512
ATTACKERS = 4  # users, 128 uploads each: over the per-user cap set below
USER_CAP = 64
VICTIM_REQUESTS = 50
STREAM_SLOTS = 64  # FORGE_UPSTREAM_STREAM_SLOTS, default
UPSTREAMS = ("pipeline", "release", "deployment", "approval")

pytestmark = pytest.mark.slow


class Tally:
    """How many uploads have their answer; wakes whoever waits for a given number."""

    def __init__(self) -> None:
        self.answered = 0
        self._changed = asyncio.Event()

    def count(self) -> None:
        self.answered += 1
        self._changed.set()

    async def reach(self, n: int) -> None:
        while self.answered < n:
            self._changed.clear()
            await self._changed.wait()


class SlowUpload:
    """One raw HTTP/1.1 request whose body arrives a byte at a time, when the test says so."""

    def __init__(self, url: str, token: str, tally: Tally) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.token = token
        self.status = 0
        self.body: dict[str, object] = {}
        self.headers: dict[str, str] = {}
        self.answered = asyncio.Event()
        self.tally = tally
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST /v1/runs HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {1024 * 1024}\r\n\r\n"
        )
        self._writer.write(head.encode() + b"x" * 1024)
        await self._writer.drain()
        asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            self.status = int(head[0].split()[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name:
                    self.headers[name.strip().lower()] = value.strip()
            self.body = json.loads(await reader.readexactly(int(self.headers["content-length"])))
        finally:
            self.answered.set()
            self.tally.count()

    async def trickle(self) -> None:
        if self._writer is not None and not self.answered.is_set():
            with contextlib.suppress(OSError):
                self._writer.write(b"x")
                await self._writer.drain()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@pytest.fixture
async def guarded_gateway(platform: Platform) -> AsyncIterator[Process]:
    echo = await Server(echo_app("echo")).start()
    env = {f"FORGE_{n.upper()}_URL": echo.url for n in UPSTREAMS}
    # Short client timeouts and a small per-user cap keep the test quick and make every limit
    # play its part; the defaults are documented in the README.
    env.update(
        {
            "FORGE_CLIENT_IDLE_TIMEOUT": "3s",
            "FORGE_CLIENT_BODY_TIMEOUT": "60s",
            "FORGE_UPSTREAM_SLOT_WAIT": "2s",
            "FORGE_USER_MAX_CONCURRENT": str(USER_CAP),
        }
    )
    gateway = await asyncio.to_thread(platform.start_process, "gateway", env)
    yield gateway
    gateway.stop()
    await echo.stop()


async def trickle_until(uploads: list[SlowUpload], done: asyncio.Event) -> None:
    """A byte per upload per second: slow, but never idle long enough for a 408."""
    while not done.is_set():
        await asyncio.gather(*(u.trickle() for u in uploads))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)


async def test_512_slow_uploads_do_not_starve_other_users(platform: Platform, guarded_gateway: Process) -> None:
    attackers = [platform.token(f"uploader-{i}@example.com", "developer") for i in range(ATTACKERS)]
    tally = Tally()
    uploads = [SlowUpload(guarded_gateway.url, attackers[i % ATTACKERS], tally) for i in range(UPLOADS)]
    stop_trickling = asyncio.Event()
    trickler: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(120):  # a hang guard, not a performance assertion
            for chunk in range(0, UPLOADS, 64):
                await asyncio.gather(*(u.start() for u in uploads[chunk : chunk + 64]))
            trickler = asyncio.create_task(trickle_until(uploads, stop_trickling))

            # Every upload that holds no connection to the service is refused (429 or 503) ...
            await tally.reach(UPLOADS - STREAM_SLOTS)

            # ... and while the rest still trickle in, another user's requests get through.
            victim = platform.headers("victim@example.com", "developer")
            async with httpx.AsyncClient(base_url=guarded_gateway.url, timeout=30) as client:

                async def victim_lane(lane: int) -> list[int]:
                    statuses = []
                    for i in range(VICTIM_REQUESTS // 10):
                        statuses.append((await client.get("/v1/runs", headers=victim)).status_code)
                        resp = await client.post("/v1/runs", json={"lane": lane, "n": i}, headers=victim)
                        statuses.append(resp.status_code)
                    return statuses

                lanes = await asyncio.gather(*(victim_lane(n) for n in range(10)))
                # Busy is not unready: the load balancer keeps sending traffic to this gateway.
                assert (await client.get("/readyz")).status_code == 200
            assert [s for lane in lanes for s in lane] == [200] * (2 * VICTIM_REQUESTS)

            # The uploads that stop sending get a 408 once the client idle timeout passes.
            stop_trickling.set()
            await tally.reach(UPLOADS)
    finally:
        stop_trickling.set()
        if trickler is not None:
            await trickler
        for u in uploads:
            u.close()

    statuses = {u.status for u in uploads}
    assert statuses <= {408, 429, 503}, statuses
    assert {408, 429, 503} <= statuses  # each limit did its part
    codes = {408: "request_timeout", 429: "rate_limited", 503: "service_unavailable"}
    for u in uploads:
        error = u.body["error"]
        assert isinstance(error, dict)
        assert error["code"] == codes[u.status]
        if u.status in (429, 503):
            assert int(u.headers["retry-after"]) >= 1
        if u.status == 429:
            assert error["details"]["concurrent_limit"] == USER_CAP
