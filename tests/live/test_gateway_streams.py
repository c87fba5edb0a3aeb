"""The gateway and streams: no idle cut-off while heartbeats flow, a cap of open streams per user."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from .conftest import Lane, SseReader


async def test_a_stream_outlives_the_upstream_timeout_and_streams_are_capped(
    lane: Lane, client: httpx.AsyncClient
) -> None:
    # A gateway whose upstreams must answer within 1 s, and at most 2 streams per user; the
    # pipeline instance behind it sends a heartbeat after 2 s of silence.
    pipeline_env = {**lane.env, "FORGE_STREAM_HEARTBEAT": "2s"}
    pipeline = lane.platform.start_process("pipeline", env=pipeline_env)
    lane.processes.append(pipeline)
    gateway = lane.gateway(
        {"FORGE_PIPELINE_URL": pipeline.url or "", "FORGE_UPSTREAM_TIMEOUT": "1s", "FORGE_USER_MAX_STREAMS": "2"}
    )
    url = f"{gateway}/v1/events?repository=quiet/nothing-happens-here"
    headers = lane.headers("viewer")
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(client.stream("GET", url, headers=headers))
        assert first.status_code == 200
        reader = SseReader(first)
        assert await reader.next_comment() == "subscribed"
        # Two heartbeats: the stream stayed open through 2 s silences, twice the upstream timeout.
        assert await reader.next_comment() == "heartbeat"
        assert await reader.next_comment() == "heartbeat"

        second = await stack.enter_async_context(client.stream("GET", url, headers=headers))
        assert second.status_code == 200
        third = await client.get(url, headers=headers)
        assert third.status_code == 429
        assert third.json()["error"]["details"]["stream_limit"] == 2
        # Another user has streams of their own.
        other = await stack.enter_async_context(
            client.stream("GET", url, headers=lane.headers("viewer", sub="o@acme.io"))
        )
        assert other.status_code == 200
        # Ordinary requests of the capped user still pass.
        plain = await client.get(f"{gateway}/v1/runs", params={"repository": "quiet/none"}, headers=headers)
        assert plain.status_code == 200

    # Closed streams are given back once the gateway has seen the clients leave.
    for _ in range(200):
        async with client.stream("GET", url, headers=headers) as again:
            if again.status_code == 200:
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("closed streams were never released")
