"""An authenticated bus: no anonymous connections; the events identity reads FORGE_EVENTS only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from forge_common import jobs
from forge_common.nats import Names

from .conftest import SecurePlatform


def _raw_session(host: str, port: int, lines: list[str]) -> str:
    """What the server answers a raw TCP client that sends ``lines`` (protocol text)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.settimeout(10)
        received = sock.recv(4096)  # INFO
        sock.sendall("".join(f"{line}\r\n" for line in lines).encode())
        chunks = [received]
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while b"-ERR" not in b"".join(chunks):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")


def test_anonymous_connect_then_subscribe_is_refused(secure: SecurePlatform) -> None:
    url = urlsplit(secure.platform.nats_url_for("events"))
    answer = _raw_session(
        url.hostname or "127.0.0.1",
        url.port or 4222,
        ['CONNECT {"verbose":false,"pedantic":false,"protocol":1}', "SUB pipeline.> 1", "PING"],
    )
    assert '"auth_required":true' in answer
    assert "-ERR 'Authorization Violation'" in answer
    assert "PONG" not in answer


def test_wrong_password_is_refused(secure: SecurePlatform) -> None:
    url = urlsplit(secure.platform.nats_url_for("worker"))
    answer = _raw_session(
        url.hostname or "127.0.0.1",
        url.port or 4222,
        ['CONNECT {"verbose":false,"user":"worker","pass":"guessed"}', "SUB pipeline.> 1", "PING"],
    )
    assert "-ERR 'Authorization Violation'" in answer


class Violations:
    """Permission errors the server reports to one connection, awaited one by one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def callback(self, exc: Exception) -> None:
        await self.queue.put(str(exc))

    async def next(self) -> str:
        return await asyncio.wait_for(self.queue.get(), 10)


@contextlib.asynccontextmanager
async def _connect(url: str) -> AsyncIterator[tuple[NATS, Violations]]:
    violations = Violations()
    nc = await nats.connect(url, error_cb=violations.callback, max_reconnect_attempts=1)
    try:
        yield nc, violations
    finally:
        await nc.close()


async def _create_run(secure: SecurePlatform, repository: str) -> str:
    platform = secure.platform
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(
            f"{platform.gateway_url}/v1/runs",
            json={"repository": repository, "branch": "main", "commit_sha": "a" * 40, "trigger_type": "push"},
            headers=platform.headers("dev@forge.local", "developer"),
        )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def test_events_identity_reads_forge_events(secure: SecurePlatform) -> None:
    platform = secure.platform
    names = Names(platform.nats_prefix)
    run_id = await _create_run(secure, f"acme/events-{uuid.uuid4().hex[:6]}")
    async with _connect(platform.nats_url_for("events")) as (nc, _violations):
        js = nc.jetstream(timeout=5)
        # A push (ordered) consumer, as `nats sub`-style subscribers use ...
        sub = await js.subscribe(
            names.event_subject("pipeline.run.created"),
            stream=names.events_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        while True:
            event = msgspec.json.decode((await sub.next_msg(timeout=15)).data)
            if event["data"]["run_id"] == run_id:
                break
        await sub.unsubscribe()
        # ... and a durable pull consumer of its own.
        pull = await js.pull_subscribe(
            names.event_subject("pipeline.>"),
            durable=f"reader-{uuid.uuid4().hex[:6]}",
            stream=names.events_stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        msgs = await pull.fetch(1, timeout=10)
        await msgs[0].ack_sync()
        assert msgspec.json.decode(msgs[0].data)["event_type"].startswith("pipeline.")


async def test_events_identity_can_do_nothing_else(secure: SecurePlatform) -> None:
    platform = secure.platform
    names = Names(platform.nats_prefix)
    async with _connect(platform.nats_url_for("events")) as (nc, violations):
        # See jobs (with their reply inboxes) or job replies: refused.
        await nc.subscribe(names.subject("pipeline.>"))
        assert "permissions violation for subscription" in (await violations.next()).lower()
        await nc.subscribe(jobs.inbox_subject(names, "*", "*"))
        assert "permissions violation for subscription" in (await violations.next()).lower()
        # Publish an event, a job or a reply: refused.
        for subject in (
            names.event_subject("pipeline.run.completed"),
            jobs.job_subject(names, "discovery", str(uuid.uuid4())),
            jobs.inbox_subject(names, str(uuid.uuid4()), str(uuid.uuid4())),
        ):
            await nc.publish(subject, b'{"status":"success"}')
            assert "permissions violation for publish" in (await violations.next()).lower()
        # The job stream, its consumers, or any stream's administration: refused.
        js = nc.jetstream(timeout=2)
        refused: list[Any] = [
            js.stream_info(names.stream(jobs.JOBS_STREAM)),
            js.consumer_info(names.stream(jobs.JOBS_STREAM), jobs.consumer_name(names, "ci")),
            js.delete_stream(names.events_stream),
            js.purge_stream(names.events_stream),
        ]
        for call in refused:
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await call
            assert 'permissions violation for publish to "$js.api.' in (await violations.next()).lower()


async def test_worker_identity_cannot_publish_jobs_or_events(secure: SecurePlatform) -> None:
    platform = secure.platform
    names = Names(platform.nats_prefix)
    async with _connect(platform.nats_url_for("worker")) as (nc, violations):
        for subject in (
            names.event_subject("pipeline.run.completed"),
            jobs.job_subject(names, "ci", str(uuid.uuid4()), str(uuid.uuid4())),
        ):
            await nc.publish(subject, b"{}")
            assert "permissions violation for publish" in (await violations.next()).lower()
        await nc.subscribe(jobs.inbox_subject(names, "*", "*"))
        assert "permissions violation for subscription" in (await violations.next()).lower()
        await nc.subscribe(names.event_subject(">"))
        assert "permissions violation for subscription" in (await violations.next()).lower()


def _forge_dev_nats_url(data_dir: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge_cli", "dev", "nats-url", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


async def test_forge_dev_nats_url_reads_events_and_nothing_else(secure: SecurePlatform) -> None:
    platform = secure.platform
    names = Names(platform.nats_prefix)
    result = _forge_dev_nats_url(str(platform.data_dir))
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("nats://events:")
    assert url.endswith(f":{urlsplit(platform.nats_url).port}")
    run_id = await _create_run(secure, f"acme/cli-{uuid.uuid4().hex[:6]}")
    async with _connect(url) as (nc, violations):
        js = nc.jetstream(timeout=5)
        sub = await js.subscribe(
            names.event_subject("pipeline.run.created"), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        while msgspec.json.decode((await sub.next_msg(timeout=15)).data)["data"]["run_id"] != run_id:
            pass
        await nc.subscribe(names.subject("pipeline.>"))
        assert "permissions violation for subscription" in (await violations.next()).lower()


def test_forge_dev_nats_url_without_a_platform(tmp_path: Path) -> None:
    result = _forge_dev_nats_url(str(tmp_path))
    assert result.returncode == 1
    assert "make run" in result.stderr


async def test_the_event_feed_works_on_the_authenticated_bus(secure: SecurePlatform) -> None:
    """GET /v1/events reads FORGE_EVENTS with the pipeline identity's own consumers."""
    platform = secure.platform
    repository = f"acme/feed-{uuid.uuid4().hex[:6]}"
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "GET",
            f"{platform.gateway_url}/v1/events?types=pipeline.run.created&repository={repository}",
            headers=platform.headers("viewer@forge.local", "viewer"),
        ) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        assert await anext(lines) == ": subscribed"
        run_id = await _create_run(secure, repository)
        async for line in lines:
            if line.startswith("data:"):
                assert msgspec.json.decode(line[5:].strip())["data"]["run_id"] == run_id
                break
    assert secure.refused_forge_processes() == []


async def test_outgoing_webhooks_work_on_the_authenticated_bus(secure: SecurePlatform) -> None:
    """The pipeline identity may create and read its durable PIPELINE_WEBHOOKS consumer: a run's
    event reaches a subscribed receiver, and NATS refused no Forge process anything."""
    from aiohttp import web

    from forge_dev.stack import free_port

    platform = secure.platform
    repository = f"acme/hooks-{uuid.uuid4().hex[:6]}"
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await arrived.put(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            created = await client.post(
                f"{platform.gateway_url}/v1/webhook-subscriptions",
                json={
                    "url": f"http://127.0.0.1:{port}/hook",
                    "event_types": ["pipeline.run.created"],
                    "repository": repository,
                },
                headers=platform.headers("admin@forge.local", "admin"),
            )
            assert created.status_code == 201, created.text
        run_id = await _create_run(secure, repository)
        body = await asyncio.wait_for(arrived.get(), 30)
        assert msgspec.json.decode(body)["data"]["run_id"] == run_id
    finally:
        await runner.cleanup()
    names = Names(platform.nats_prefix)
    nc = await nats.connect(platform.nats_url)
    try:
        info = await nc.jetstream().consumer_info(names.events_stream, names.durable("PIPELINE_WEBHOOKS"))
        assert info.config.durable_name == names.durable("PIPELINE_WEBHOOKS")
    finally:
        await nc.close()
    assert secure.refused_forge_processes() == []
