"""Fixtures of the batch tests: everything through one gateway, as a client would.

Runs live on a pipeline instance of these tests (own database, dispatcher off, so a run stays
pending until cancelled); releases, approvals and deployments on the platform's shared services.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from forge_dev.stack import Process
from forge_dev.testing import Platform


@pytest.fixture(scope="session")
def batch_pipeline_database(platform: Platform) -> Iterator[str]:
    name = f"forge_batch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(platform.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlsplit(platform.database_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(platform.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def batch_gateway(platform: Platform, batch_pipeline_database: str) -> Iterator[Process]:
    pipeline = platform.start_process(
        "pipeline",
        env={
            "FORGE_DATABASE_URL": batch_pipeline_database,
            "FORGE_DISPATCHER_ENABLED": "false",
            "FORGE_DB_POOL_MIN": "1",
        },
    )
    gateway = platform.start_process(
        "gateway",
        env={"FORGE_PIPELINE_URL": pipeline.url, "FORGE_RATE_LIMIT": "1000000", "FORGE_USER_MAX_CONCURRENT": "1000"},
    )
    yield gateway
    gateway.stop()
    pipeline.stop()


@pytest.fixture
async def gw(batch_gateway: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=batch_gateway.url, timeout=60.0) as client:
        yield client


@pytest.fixture
async def runs_db(batch_pipeline_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The batch pipeline instance's database, to check what a batch changed."""
    conn = await psycopg.AsyncConnection.connect(batch_pipeline_database, row_factory=dict_row, autocommit=True)
    yield conn
    await conn.close()


@pytest.fixture
async def platform_db(platform: Platform) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The platform's database (approval and deployment schemas)."""
    conn = await psycopg.AsyncConnection.connect(platform.database_url, row_factory=dict_row, autocommit=True)
    yield conn
    await conn.close()
