"""Lookups on the POST path stay bounded as a repository's history grows (issue 11): finding the
run of a commit reads the repository-and-commit index, not every run of the repository. Real
Postgres: a repository of 5,000 runs, the statement the service runs, its plan's buffer count."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from psycopg import sql as pgsql

from forge_pipeline import store

from .conftest import unique_repo, unique_sha


async def _buffers(db: psycopg.AsyncConnection[Any], sql: str, params: dict[str, object], generic: bool) -> int:
    """Pages the statement reads, planned for these values or (``generic``) as a prepared
    statement's generic plan, the one psycopg's prepared statements end up with."""
    if not generic:
        cur = await db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
    else:
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sql)
        kinds = ["text[]" if isinstance(params[n], list) else "text" for n in names]
        types = ", ".join(kinds)
        await db.execute("DEALLOCATE ALL")
        await db.execute("SET plan_cache_mode = force_generic_plan")
        # PREPARE with the simple query protocol (its $n are its own, not the protocol's).
        result = db.pgconn.exec_(f"PREPARE run_of_commit ({types}) AS {numbered}".encode())
        assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
        # The values as literals: EXPLAIN EXECUTE takes no protocol parameters.
        args = pgsql.SQL(", ").join(pgsql.Literal(params[n]) for n in names)
        query = pgsql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE run_of_commit({})").format(args)
        cur = await db.execute(query)
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
    for generic in (False, True):
        for sha in (unique_sha(), unique_sha()[:9], existing, existing[:12]):
            params = store._commit_params(repository.upper(), sha)
            buffers = await _buffers(db, store._SQL_RUN_OF_COMMIT, params, generic)
            # An index range of a few rows, never the 5,000 runs.
            assert buffers < 100, (sha, generic, buffers)
    found = await store.run_by_commit(db, repository.upper(), existing[:12])
    assert found is not None
    assert found.commit_sha == existing
    await db.rollback()
