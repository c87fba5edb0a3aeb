"""Gateway instances of their own (started like the platform's, with other settings) in front of
real echo servers, so what the gateway forwards can be observed exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .upstreams import Server, echo_app

UPSTREAMS = ("pipeline", "release", "deployment", "approval")


@pytest.fixture(scope="session")
async def echo_servers() -> AsyncIterator[dict[str, Server]]:
    servers = {name: await Server(echo_app(name)).start() for name in UPSTREAMS}
    yield servers
    for server in servers.values():
        await server.stop()


async def start_gateway(platform: Platform, env: dict[str, str], wait: bool = True) -> Process:
    # In a thread: start_process blocks while polling /readyz, and the gateway's readiness check
    # calls the echo servers that live in this event loop.
    return await asyncio.to_thread(platform.start_process, "gateway", env, wait)


def upstream_env(servers: dict[str, Server]) -> dict[str, str]:
    return {f"FORGE_{name.upper()}_URL": servers[name].url for name in UPSTREAMS}


@pytest.fixture(scope="session")
async def echo_gateway(platform: Platform, echo_servers: dict[str, Server]) -> AsyncIterator[Process]:
    """Default limits, a 1 s upstream timeout, every upstream an echo server."""
    proc = await start_gateway(platform, {**upstream_env(echo_servers), "FORGE_UPSTREAM_TIMEOUT": "1s"})
    yield proc
    proc.stop()
