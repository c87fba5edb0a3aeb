"""Outgoing webhooks on a real platform, received by real HTTP servers on loopback.

The webhook pipeline instance has a database and a NATS prefix of its own (so its durable
consumer reads only the events these tests publish), the dispatcher off (a run stays pending),
``FORGE_WEBHOOK_ALLOW_PRIVATE=true`` (the receivers are on 127.0.0.1) and a retry schedule
shrunk from seconds-to-hours to tenths of a second; a gateway in front of it is what the tests
talk to. Events of other services are published onto the instance's ``FORGE_EVENTS`` as those
services' outbox relays publish them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import nats
import psycopg
import pytest
from aiohttp import web

from forge_common.events import EventData, envelope
from forge_common.nats import Names
from forge_dev.stack import Process, free_port, wait_http
from forge_dev.testing import Platform

ADMIN = "ada.admin@acme.io"
DEVELOPER = "dev.hooks@acme.io"

# The shrunk schedule: retries after 0.15-0.3 s, 0.3-0.6 s, 0.6-1.2 s, ... (at most 4 s).
HOOK_ENV = {
    "FORGE_DISPATCHER_ENABLED": "false",
    "FORGE_DB_POOL_MIN": "1",
    "FORGE_WEBHOOK_ALLOW_PRIVATE": "true",
    "FORGE_WEBHOOK_RETRY_FIRST": "0.3",
    "FORGE_WEBHOOK_RETRY_LONGEST": "4",
    "FORGE_WEBHOOK_TIMEOUT": "2",
    "FORGE_WEBHOOK_POLL_INTERVAL": "0.05",
}


@dataclass
class Instance:
    """A pipeline instance with webhooks, its gateway, database and NATS prefix."""

    platform: Platform
    pipeline: Process
    gateway: Process
    database_url: str
    prefix: str

    @property
    def url(self) -> str:
        return self.gateway.url

    def headers(self, sub: str = ADMIN, *roles: str) -> dict[str, str]:
        return self.platform.headers(sub, *(roles or ("admin",)))

    async def publish(self, data: EventData, event_id: str | None = None) -> dict[str, Any]:
        """Publish an event as a service's outbox relay does; returns the envelope."""
        names = Names(self.prefix)
        env = envelope(data)
        if event_id is not None:
            env.event_id = event_id
        body = msgspec.json.encode(env)
        nc = await nats.connect(self.platform.nats_url)
        try:
            await nc.jetstream().publish(
                names.event_subject(data.event_type),
                body,
                stream=names.events_stream,
                headers={"Nats-Msg-Id": f"{env.event_id}:{uuid.uuid4().hex}"},
            )
        finally:
            await nc.close()
        decoded: dict[str, Any] = msgspec.json.decode(body)
        return decoded

    def restart(self) -> None:
        """Stop the pipeline process (SIGTERM, as an orchestrator does) and start it again."""
        self.pipeline.stop()
        self.platform.stack.infra.respawn(self.pipeline)
        self.pipeline.stopped = False
        wait_http(f"{self.pipeline.url}/readyz", 60, self.pipeline.popen, self.pipeline.name)


def _database(platform: Platform, label: str) -> str:
    name = f"forge_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(platform.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlsplit(platform.database_url)._replace(path=f"/{name}").geturl()


def _drop(platform: Platform, url: str) -> None:
    with psycopg.connect(platform.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')


@contextlib.contextmanager
def start_instance(platform: Platform, label: str, env: dict[str, str] | None = None) -> Iterator[Instance]:
    database_url = _database(platform, label)
    # Under the platform's prefix, so the session's clean-up deletes its streams too.
    prefix = f"{platform.nats_prefix}.{label}{uuid.uuid4().hex[:6]}"
    pipeline = platform.start_process(
        "pipeline", env={**HOOK_ENV, "FORGE_DATABASE_URL": database_url, "FORGE_NATS_PREFIX": prefix, **(env or {})}
    )
    gateway = platform.start_process(
        "gateway",
        env={"FORGE_PIPELINE_URL": pipeline.url, "FORGE_RATE_LIMIT": "1000000", "FORGE_USER_MAX_CONCURRENT": "1000"},
    )
    try:
        yield Instance(platform, pipeline, gateway, database_url, prefix)
    finally:
        gateway.stop()
        pipeline.stop()
        _drop(platform, database_url)


@pytest.fixture(scope="session")
def hooks(platform: Platform) -> Iterator[Instance]:
    with start_instance(platform, "hooks") as instance:
        yield instance


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic


@dataclass
class Receiver:
    """A real HTTP server on loopback; each path answers as its script says and records what
    arrived. A script entry is a status code, ("sleep", seconds) for a target that hangs, or
    ("redirect", url) for a 302 to ``url``."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[Any]] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def path(self, *script: Any) -> str:
        """A fresh path answering ``script`` in turn (then 200 for ever); its full URL."""
        name = f"/hook/{uuid.uuid4().hex}"
        self.scripts[name] = list(script)
        return self.url + name

    def at(self, url: str) -> list[Received]:
        path = urlsplit(url).path
        return [r for r in self.received if r.path == path]

    async def wait(self, url: str, count: int, timeout: float = 30.0) -> list[Received]:
        """The first ``count`` requests to ``url`` once they have arrived (fails after ``timeout``)."""

        async def enough() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: len(self.at(url)) >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(f"{len(self.at(url))} of {count} requests to {url} within {timeout}s") from None
        return self.at(url)[:count]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.changed:
            self.received.append(Received(request.path, dict(request.headers), body, time.monotonic()))
            self.changed.notify_all()
        script = self.scripts.get(request.path, [])
        step = script.pop(0) if script else 200
        if isinstance(step, tuple) and step[0] == "redirect":
            raise web.HTTPFound(step[1])
        if isinstance(step, tuple):
            await asyncio.sleep(step[1])
            return web.Response(status=200, text="too late")
        return web.Response(status=int(step), text="x" * 10_000 if step >= 500 else "ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    recv.url = f"http://127.0.0.1:{port}"
    yield recv
    await runner.cleanup()


async def subscribe(
    client: httpx.AsyncClient, hooks: Instance, body: dict[str, Any], sub: str = ADMIN, *roles: str
) -> dict[str, Any]:
    r = await client.post(f"{hooks.url}/v1/webhook-subscriptions", json=body, headers=hooks.headers(sub, *roles))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def deliveries(client: httpx.AsyncClient, hooks: Instance, subscription_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"{hooks.url}/v1/webhook-subscriptions/{subscription_id}/deliveries", headers=hooks.headers())
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["deliveries"]
    return found
