"""The migration runner: ordered, transactional, recorded, and safe when replicas start at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from forge_common.db import MigrationError, migrate
from forge_dev.testing import Platform


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch migrations package on sys.path; the slow first file makes the runs overlap."""
    name = f"scratch_migrations_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "0001_items.sql").write_text(
        "SELECT pg_sleep(0.5);\nCREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);\n"
    )
    (root / "0002_seed.sql").write_text("INSERT INTO items (id, name) VALUES (1, 'first');\n")
    (root / "notes.txt").write_text("not a migration")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


@pytest.fixture
async def schema(platform: Platform) -> AsyncIterator[str]:
    name = f"mig_{uuid.uuid4().hex[:8]}"
    yield name
    async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return list(await (await conn.execute(sql)).fetchall())


async def test_two_replicas_migrating_at_once_apply_each_file_once(
    platform: Platform, package: Path, schema: str
) -> None:
    url = platform.database_url
    first, second = await asyncio.gather(migrate(url, schema, package.name), migrate(url, schema, package.name))
    assert sorted([first, second]) == [[], [1, 2]]  # one did the work, the other found nothing to do
    assert await fetch(url, f'SELECT id, name FROM "{schema}".items') == [(1, "first")]
    assert await fetch(url, f'SELECT version, name FROM "{schema}".schema_migrations ORDER BY version') == [
        (1, "items"),
        (2, "seed"),
    ]
    # Every schema gets its outbox with the migrations.
    assert await fetch(url, f'SELECT count(*) FROM "{schema}".outbox') == [(0,)]
    assert await migrate(url, schema, package.name) == []


async def test_a_failing_migration_leaves_nothing_behind(platform: Platform, package: Path, schema: str) -> None:
    url = platform.database_url
    await migrate(url, schema, package.name)
    (package / "0003_broken.sql").write_text("CREATE TABLE half (id integer);\nSELECT 1 / 0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        await migrate(url, schema, package.name)
    tables = await fetch(url, f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'")
    assert ("half",) not in tables
    assert await fetch(url, f'SELECT max(version) FROM "{schema}".schema_migrations') == [(2,)]

    (package / "0003_broken.sql").write_text("CREATE TABLE half (id integer);\n")
    assert await migrate(url, schema, package.name) == [3]


async def test_an_applied_migration_that_changed_is_refused(platform: Platform, package: Path, schema: str) -> None:
    url = platform.database_url
    await migrate(url, schema, package.name)
    (package / "0002_seed.sql").write_text("INSERT INTO items (id, name) VALUES (2, 'edited');\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(url, schema, package.name)
