"""Search (docs/api-search.md): step logs by word, runs by commit prefix, branch, tag, author or
error text.

Logs are indexed when a step's log is final: the worker uploads the whole log to S3, then
reports the step finished; the report's route (api.py) calls :func:`index_step_logs` after the
report's commit (steps reported without a ``logs_s3_key`` have no log and are skipped). The first ``FORGE_SEARCH_LOG_INDEX_BYTES`` of the log (1 MiB by default) are
split into lines and copied into ``pipeline.log_lines``, one row per line with a generated
``tsvector`` behind a GIN index; a re-report replaces the step's lines. Lines longer than
``LINE_CHARACTERS`` are cut. Full text with the ``simple`` configuration: words as written, no
stemming and no stop words.

Both lists page by an opaque cursor (forge_common.cursor) bound to the query and its filters.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar

import msgspec
import structlog
from psycopg.rows import tuple_row

from forge_common import cursor
from forge_common.db import Pool
from forge_common.errors import InvalidRequest
from forge_common.events import isoformat

from . import domain, live

__all__ = [
    "LINE_CHARACTERS",
    "LogHit",
    "LogSearch",
    "RunHit",
    "RunSearch",
    "index_step_logs",
    "parse_log_query",
    "parse_run_query",
    "search_logs",
    "search_runs",
]

log = structlog.get_logger("forge_pipeline.search")

LINE_CHARACTERS = 2000
QUERY_CHARACTERS = 200
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Step states whose log is final: the worker has uploaded it whole before reporting them.
FINAL_STEP = frozenset({"success", "failed", "cancelled"})


# --- indexing --------------------------------------------------------------------------------------

_SQL_STEPS_TO_INDEX = """
SELECT s.id::text, s.run_id::text, r.repository, s.logs_s3_key, p.name, t.project_name, s.name
FROM pipeline.steps s
JOIN pipeline.tasks t ON t.id = s.task_id
JOIN pipeline.phases p ON p.id = t.phase_id
JOIN pipeline.runs r ON r.id = s.run_id
WHERE s.id = ANY(%s::uuid[]) AND s.status::text = ANY(%s::text[])
"""


def split_lines(data: bytes, truncated: bool) -> list[str]:
    """The log's lines (the last, cut-off one dropped when the log was longer than read)."""
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if truncated or lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r")[:LINE_CHARACTERS].replace("\x00", "") for line in lines]


async def index_step_logs(pool: Pool, s3: Any, step_ids: list[str], max_bytes: int) -> int:
    """Index the logs of those of ``step_ids`` that are final; the number of lines indexed.

    Called after the report's commit. A failure (S3 or database) is logged, not raised: the
    report has been applied, and the step's log stays readable, only not searchable.
    """
    if not step_ids or max_bytes <= 0:
        return 0
    try:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_SQL_STEPS_TO_INDEX, (step_ids, list(FINAL_STEP)))
            steps = await cur.fetchall()
        total = 0
        async with s3.client() as client:
            for step_id, run_id, repository, stored, phase, project, name in steps:
                key = stored or live.log_key(run_id, phase, project, name)
                got = await live.read_object(client, s3.bucket, key, f"bytes=0-{max_bytes - 1}")
                lines = split_lines(got[0], got[1] > len(got[0])) if got is not None else []
                total += await _store_lines(pool, step_id, run_id, repository, lines)
        return total
    except Exception:
        log.warning("log_index_failed", steps=step_ids[:10], exc_info=True)
        return 0


async def _store_lines(pool: Pool, step_id: str, run_id: str, repository: str, lines: list[str]) -> int:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("DELETE FROM pipeline.log_lines WHERE step_id = %s", (step_id,))
        if not lines:
            return 0
        copy_sql = "COPY pipeline.log_lines (step_id, run_id, repository, line_number, line) FROM STDIN"
        async with conn.cursor().copy(copy_sql) as copy:
            for number, line in enumerate(lines, start=1):
                await copy.write_row((step_id, run_id, repository, number, line))
    return len(lines)


# --- queries ---------------------------------------------------------------------------------------


def _query_text(q: str | None) -> str:
    if q is None or not q.strip():
        raise InvalidRequest("query parameter 'q' is required", {"field": "q"})
    if len(q) > QUERY_CHARACTERS:
        raise InvalidRequest(f"q must be at most {QUERY_CHARACTERS} characters", {"field": "q"})
    return q.strip()


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not (1 <= int(value) <= MAX_LIMIT):
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", {"field": "limit", "value": value[:20]})
    return int(value)


class LogSearch(msgspec.Struct, frozen=True):
    q: str
    repository: str | None
    since: dt.datetime | None
    limit: int
    after: tuple[dt.datetime, str, int] | None = None

    def scope(self) -> str:
        since = self.since.isoformat() if self.since else ""
        return cursor.fingerprint("search.logs", q=self.q, repository=self.repository or "", since=since)


def parse_log_query(
    q: str | None, repository: str | None, since: str | None, limit: str | None, after: str | None
) -> LogSearch:
    text = _query_text(q)
    if repository is not None:
        domain.validate_repository(repository)
    since_at = domain.parse_timestamp(since, "since") if since is not None else None
    query = LogSearch(q=text, repository=repository, since=since_at, limit=_limit(limit))
    if after is None:
        return query
    key = cursor.decode(after, query.scope())
    try:
        at = dt.datetime.fromisoformat(str(key[0]))
        position = (at, str(uuid.UUID(str(key[1]))), int(key[2]))
    except (ValueError, IndexError, TypeError):
        raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None
    return msgspec.structs.replace(query, after=position)


class LogHit(msgspec.Struct, kw_only=True):
    run_id: str
    step_id: str
    repository: str
    phase: str
    project: str
    step: str
    line_number: int
    line: str
    indexed_at: str
    # The step's log from this line (a byte range is not known here: the line number is).
    step_url: str
    run_url: str


class LogResults(msgspec.Struct, kw_only=True):
    """One page of matching log lines, newest logs first."""

    example: ClassVar[dict[str, Any]] = {
        "results": [
            {
                "run_id": "0b5f2a4e-8c1d-4e7a-9f3b-2d6c8e1a4b7f",
                "step_id": "5e8a1c3f-2b4d-4f6e-8a9c-1d3e5f7a9b2c",
                "repository": "acme/shop",
                "phase": "test",
                "project": "api",
                "step": "unit",
                "line_number": 812,
                "line": "FAILED tests/test_cache.py::test_expiry - TimeoutError",
                "indexed_at": "2025-10-05T12:03:00Z",
                "step_url": "/v1/steps/5e8a1c3f-2b4d-4f6e-8a9c-1d3e5f7a9b2c/logs",
                "run_url": "/v1/runs/0b5f2a4e-8c1d-4e7a-9f3b-2d6c8e1a4b7f",
            }
        ],
        "next_cursor": "WzEsImFiYyIsWyIyMDI1Il1d",
    }
    results: list[LogHit]
    next_cursor: str | None = None


# Newest first, then by step and line; the keyset mixes directions, so it is spelt out.
_SQL_SEARCH_LOGS = """
SELECT l.indexed_at, l.step_id::text, l.line_number, l.run_id::text, l.repository, l.line,
       p.name, t.project_name, s.name
FROM pipeline.log_lines l
JOIN pipeline.steps s ON s.id = l.step_id
JOIN pipeline.tasks t ON t.id = s.task_id
JOIN pipeline.phases p ON p.id = t.phase_id
WHERE l.words @@ websearch_to_tsquery('simple', %(q)s)
  AND (%(repository)s::text IS NULL OR l.repository = %(repository)s)
  AND (%(since)s::timestamptz IS NULL OR l.indexed_at >= %(since)s)
  AND (%(at)s::timestamptz IS NULL OR l.indexed_at < %(at)s
       OR (l.indexed_at = %(at)s AND (l.step_id, l.line_number) > (%(step)s::uuid, %(line)s::integer)))
ORDER BY l.indexed_at DESC, l.step_id, l.line_number
LIMIT %(limit)s
"""


async def search_logs(pool: Pool, query: LogSearch) -> LogResults:
    at, step, line = query.after if query.after is not None else (None, None, None)
    params = {
        "q": query.q,
        "repository": query.repository,
        "since": query.since,
        "at": at,
        "step": step,
        "line": line,
        "limit": query.limit + 1,
    }
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_SQL_SEARCH_LOGS, params)
        rows = await cur.fetchall()
    hits = [
        LogHit(
            run_id=run_id,
            step_id=step_id,
            repository=repository,
            phase=phase,
            project=project,
            step=name,
            line_number=number,
            line=text,
            indexed_at=isoformat(indexed_at),
            step_url=f"/v1/steps/{step_id}/logs",
            run_url=f"/v1/runs/{run_id}",
        )
        for indexed_at, step_id, number, run_id, repository, text, phase, project, name in rows[: query.limit]
    ]
    next_cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        next_cursor = cursor.encode(query.scope(), [last[0].isoformat(), last[1], last[2]])
    return LogResults(results=hits, next_cursor=next_cursor)


# --- GET /v1/search: runs --------------------------------------------------------------------------

SEARCH_TYPES = ("runs",)


class RunSearch(msgspec.Struct, frozen=True):
    q: str
    repository: str | None
    limit: int
    after: tuple[dt.datetime, str] | None = None

    def scope(self) -> str:
        return cursor.fingerprint("search.runs", q=self.q, repository=self.repository or "")


def parse_run_query(
    q: str | None, search_type: str | None, repository: str | None, limit: str | None, after: str | None
) -> RunSearch:
    text = _query_text(q)
    if search_type is not None and search_type not in SEARCH_TYPES:
        raise InvalidRequest(
            f"type must be one of {', '.join(SEARCH_TYPES)} (releases: GET /v1/releases/search)",
            {"field": "type", "value": search_type[:50]},
        )
    if repository is not None:
        domain.validate_repository(repository)
    query = RunSearch(q=text, repository=repository, limit=_limit(limit))
    if after is None:
        return query
    key = cursor.decode(after, query.scope())
    try:
        position = (dt.datetime.fromisoformat(str(key[0])), str(uuid.UUID(str(key[1]))))
    except (ValueError, IndexError, TypeError):
        raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None
    return msgspec.structs.replace(query, after=position)


class RunHit(msgspec.Struct, kw_only=True):
    type: str
    id: str
    repository: str
    branch: str
    commit_sha: str
    tag: str | None
    status: str
    triggered_by: str
    error: str | None
    created_at: str
    # Which of commit, branch, tag, author, error matched.
    matched: list[str]
    url: str


class RunResults(msgspec.Struct, kw_only=True):
    """One page of matching runs, newest first."""

    example: ClassVar[dict[str, Any]] = {
        "results": [
            {
                "type": "run",
                "id": "0b5f2a4e-8c1d-4e7a-9f3b-2d6c8e1a4b7f",
                "repository": "acme/shop",
                "branch": "main",
                "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "tag": None,
                "status": "failed",
                "triggered_by": "dev@acme.io",
                "error": "task api of phase test failed",
                "created_at": "2025-10-05T12:03:00Z",
                "matched": ["commit"],
                "url": "/v1/runs/0b5f2a4e-8c1d-4e7a-9f3b-2d6c8e1a4b7f",
            }
        ],
        "next_cursor": None,
    }
    results: list[RunHit]
    next_cursor: str | None = None


# Each arm is backed by an index of 0080_search.sql; the planner ORs their bitmaps.
_SQL_SEARCH_RUNS = """
SELECT r.created_at, r.id::text, r.repository, r.branch, r.commit_sha, r.tag, r.status::text,
       r.triggered_by, r.error,
       r.commit_sha LIKE %(prefix)s, r.branch = %(q)s, r.tag = %(q)s, r.triggered_by = %(q)s,
       to_tsvector('simple', coalesce(r.error, '')) @@ websearch_to_tsquery('simple', %(q)s)
FROM pipeline.runs r
WHERE (r.commit_sha LIKE %(prefix)s OR r.branch = %(q)s OR r.tag = %(q)s OR r.triggered_by = %(q)s
       OR to_tsvector('simple', coalesce(r.error, '')) @@ websearch_to_tsquery('simple', %(q)s))
  AND (%(repository)s::text IS NULL OR r.repository = %(repository)s)
  AND (%(at)s::timestamptz IS NULL OR (r.created_at, r.id) < (%(at)s, %(id)s::uuid))
ORDER BY r.created_at DESC, r.id DESC
LIMIT %(limit)s
"""
_MATCHES = ("commit", "branch", "tag", "author", "error")


def _commit_prefix(q: str) -> str | None:
    """A LIKE pattern for a commit prefix (4 to 40 hex digits); else ``None``, which matches nothing."""
    lowered = q.lower()
    if 4 <= len(lowered) <= 40 and all(c in "0123456789abcdef" for c in lowered):
        return lowered + "%"
    return None


async def search_runs(pool: Pool, query: RunSearch) -> RunResults:
    at, run_id = query.after if query.after is not None else (None, None)
    params = {
        "q": query.q,
        "prefix": _commit_prefix(query.q),
        "repository": query.repository,
        "at": at,
        "id": run_id,
        "limit": query.limit + 1,
    }
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_SQL_SEARCH_RUNS, params)
        rows = await cur.fetchall()
    hits = [
        RunHit(
            type="run",
            id=row[1],
            repository=row[2],
            branch=row[3],
            commit_sha=row[4],
            tag=row[5],
            status=row[6],
            triggered_by=row[7],
            error=row[8],
            created_at=isoformat(row[0]),
            matched=[name for name, hit in zip(_MATCHES, row[9:14], strict=True) if hit],
            url=f"/v1/runs/{row[1]}",
        )
        for row in rows[: query.limit]
    ]
    next_cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        next_cursor = cursor.encode(query.scope(), [last[0].isoformat(), last[1]])
    return RunResults(results=hits, next_cursor=next_cursor)
