"""`forge-<service> migrate`, what the charts' migration Job runs: it migrates a fresh database,
is idempotent, and a service started with FORGE_MIGRATE_ON_START=false leaves migrating to it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from forge_common.db import migration_files
from forge_dev.testing import Platform

DATABASE_SERVICES = {
    "pipeline": "forge_pipeline.migrations",
    "release": "forge_release.migrations",
    "deployment": "forge_deployment.migrations",
    "approval": "forge_approval.migrations",
}


@pytest.fixture
def fresh_database(platform: Platform) -> Iterator[str]:
    admin = platform.stack.infra.admin_database_url
    name = f"forge_migrate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(platform.database_url)
    yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def environment(database_url: str) -> dict[str, str]:
    return {**os.environ, "FORGE_DATABASE_URL": database_url, "FORGE_LOG_FORMAT": "json"}


def migrate(service: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"forge_{service}", "migrate"],
        env=environment(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def migrate_all(database_url: str) -> dict[str, str]:
    """`migrate` of every service at once, as the chart's Jobs may run; each one's output."""
    procs = {
        service: subprocess.Popen(
            [sys.executable, "-m", f"forge_{service}", "migrate"],
            env=environment(database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for service in DATABASE_SERVICES
    }
    outputs = {}
    for service, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        outputs[service] = out
    return outputs


def applied(database_url: str, schema: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.schema_migrations",)).fetchone()
        if exists is None or exists[0] is None:
            return []
        return [row[0] for row in conn.execute(f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')]


def test_migrate_applies_every_migration_once_and_is_idempotent(fresh_database: str) -> None:
    expected = {service: [v for v, _, _ in migration_files(package)] for service, package in DATABASE_SERVICES.items()}
    migrate_all(fresh_database)
    assert {service: applied(fresh_database, service) for service in DATABASE_SERVICES} == expected
    # Idempotent: a second run (a re-tried Job, the next upgrade) applies nothing and succeeds.
    again = migrate("approval", fresh_database)
    assert again.returncode == 0, again.stderr
    assert '"applied": []' in again.stdout + again.stderr
    assert {service: applied(fresh_database, service) for service in DATABASE_SERVICES} == expected


@pytest.mark.parametrize("process", ["gateway", "worker"])
def test_processes_without_a_database_answer_migrate_with_nothing_to_do(process: str, fresh_database: str) -> None:
    result = migrate(process, fresh_database)
    assert result.returncode == 0, result.stderr
    assert "nothing to migrate" in (result.stdout + result.stderr).replace("_", " ")


def test_a_service_with_migrate_on_start_off_leaves_the_schema_to_the_job(
    platform: Platform, fresh_database: str
) -> None:
    proc = platform.start_process(
        "approval",
        env={"FORGE_DATABASE_URL": fresh_database, "FORGE_MIGRATE_ON_START": "false", "FORGE_DB_POOL_MIN": "1"},
    )
    try:
        assert proc.url is not None
        assert httpx.get(f"{proc.url}/healthz", timeout=10).status_code == 200
        assert applied(fresh_database, "approval") == []
        result = migrate("approval", fresh_database)
        assert result.returncode == 0, result.stderr
        assert applied(fresh_database, "approval") == [v for v, _, _ in migration_files("forge_approval.migrations")]
    finally:
        proc.stop()
