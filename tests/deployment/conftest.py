"""Fixtures of the deployment tests (helpers live in support.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .support import Dedicated, database_url


@pytest.fixture
async def gw(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway, as a user of the platform would have."""
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=60.0) as client:
        yield client


@pytest.fixture
def dedicated_deployment(platform: Platform, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Dedicated]]:
    """Start deployment instances whose pending count and reconciler see only their own rows."""
    started: list[tuple[Process, str]] = []
    admin = platform.stack.infra.admin_database_url

    def start(env: dict[str, str]) -> Dedicated:
        name = f"forge_deploy_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db_url = database_url(platform.database_url, name)
        gitops_url = (tmp_path / f"{name}-gitops.git").as_uri()
        proc = platform.start_process(
            "deployment",
            # Small pools: the test server's connections are shared by every suite on the machine.
            env={
                "FORGE_DATABASE_URL": db_url,
                "FORGE_GITOPS_URL": gitops_url,
                "FORGE_DB_POOL_MIN": "1",
                "FORGE_DB_POOL_MAX": "5",
                **env,
            },
        )
        started.append((proc, name))
        return Dedicated(proc, gitops_url, db_url)

    yield start
    for proc, name in started:
        proc.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
