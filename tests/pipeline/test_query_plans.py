"""Lookups on the POST path stay bounded as a repository's history grows (issue 11): finding the
run of a commit reads the repository-and-commit index, not every run of the repository. Real
Postgres: a repository of 5,000 runs, the statement the service runs, its plan's buffer count."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from forge_pipeline import store

from .conftest import unique_repo, unique_sha


async def _buffers(db: psycopg.AsyncConnection[Any], sql: str, params: dict[str, object]) -> int:
    cur = await db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
    row = await cur.fetchone()
    assert row is not None
    plan = row["QUERY PLAN"]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


async def test_the_run_of_a_commit_is_found_without_reading_the_repository(db: psycopg.AsyncConnection[Any]) -> None:
    repository = unique_repo()
    async with db.transaction():
        await db.execute(
            """INSERT INTO pipeline.runs (id, repository, branch, commit_sha, triggered_by, trigger_type, status)
               SELECT gen_random_uuid(), %s, 'main', md5(i::text) || left(md5((i + 1)::text), 8), 'u', 'push', 'success'
               FROM generate_series(1, 5000) AS i""",
            (repository,),
        )
    await db.execute("ANALYZE pipeline.runs")
    await db.commit()
    existing = "c4ca4238a0b923820dcc509a6f75849bc81e728d"  # md5("1") and 8 characters of md5("2"): run 1
    for sha in (unique_sha(), unique_sha()[:9], existing, existing[:12]):
        buffers = await _buffers(db, store._SQL_RUN_OF_COMMIT, store._commit_params(repository.upper(), sha))
        # An index descent or two (a few dozen pages with the prefixes), never the 5,000 runs.
        assert buffers < 400, (sha, buffers)
    found = await store.run_by_commit(db, repository.upper(), existing[:12])
    assert found is not None
    assert found.commit_sha == existing
    await db.rollback()
