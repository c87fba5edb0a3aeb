"""Search (docs/api-search.md): step logs by word; runs by commit prefix, branch, tag, author or
error text, merged with the release service's releases.

Logs are indexed when a step's log is final: the worker uploads the whole log to S3, then
reports the step finished; the report's transaction queues the step in
``pipeline.log_index_queue`` (a trigger, migration 0170; steps reported without a
``logs_s3_key`` have no log and are not queued), and :class:`LogIndexer`, woken by the report,
indexes it in the background: the worker's report does not wait for it, and a crash or an S3
outage only delays it (retries with backoff). The first ``FORGE_SEARCH_LOG_INDEX_BYTES`` of the
log (1 MiB by default) are split into lines and copied into ``pipeline.log_lines``, one row per line with a generated
``tsvector`` behind a GIN index; a re-report replaces the step's lines. Lines longer than
``LINE_CHARACTERS`` are cut. Full text with the ``simple`` configuration: words as written, no
stemming and no stop words.

Both lists page by an opaque cursor (forge_common.cursor) bound to the query and its filters.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Any, ClassVar

import msgspec
import structlog
from psycopg import sql
from psycopg.rows import tuple_row

from forge_common import cursor, metrics
from forge_common.client import ServiceClient
from forge_common.db import Pool
from forge_common.errors import BadGateway, GatewayTimeout, InvalidRequest, unavailable
from forge_common.events import isoformat
from forge_common.search import ReleaseHit, ReleaseSearchResults, page_limit, query_text, release_cursor

from . import domain, live
from .metrics import LOG_INDEX_OLDEST, LOG_INDEX_PENDING

__all__ = [
    "INDEXER_KEY",
    "LINE_CHARACTERS",
    "LogHit",
    "LogIndexer",
    "LogSearch",
    "ReleaseSearch",
    "RunHit",
    "Search",
    "SearchResults",
    "parse_log_query",
    "parse_search",
    "search",
    "search_logs",
]

log = structlog.get_logger("forge_pipeline.search")

LINE_CHARACTERS = 2000
# Step states whose log is final: the worker has uploaded it whole before reporting them.
FINAL_STEP = frozenset({"success", "failed", "cancelled"})


# --- indexing --------------------------------------------------------------------------------------

# Claim due rows for a lease (another replica skips them until it ends), with what indexing reads.
_SQL_CLAIM = """
WITH due AS (
    SELECT step_id FROM pipeline.log_index_queue WHERE next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pipeline.log_index_queue q SET attempts = q.attempts + 1,
        next_attempt_at = now() + make_interval(secs => least(%(lease)s * 2 ^ q.attempts, %(max_backoff)s))
    FROM due WHERE q.step_id = due.step_id
    RETURNING q.step_id, q.attempts
)
SELECT c.step_id::text, c.attempts, s.run_id::text, r.repository, s.logs_s3_key, p.name, t.project_name, s.name
FROM claimed c
JOIN pipeline.steps s ON s.id = c.step_id
JOIN pipeline.tasks t ON t.id = s.task_id
JOIN pipeline.phases p ON p.id = t.phase_id
JOIN pipeline.runs r ON r.id = s.run_id
"""
# This claim still holds: not re-reported meanwhile (the trigger reset attempts: index it again),
# nor taken by another replica after the lease ran out. Deleting it also locks it until commit.
_SQL_DONE = "DELETE FROM pipeline.log_index_queue WHERE step_id = %s AND attempts = %s RETURNING step_id"


def split_lines(data: bytes, truncated: bool) -> list[str]:
    """The log's lines (the last, cut-off one dropped when the log was longer than read)."""
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if truncated or lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r")[:LINE_CHARACTERS].replace("\x00", "") for line in lines]


INDEXER_KEY = "pipeline.log_indexer"
# A claim's lease (doubling with every attempt, up to the cap): the wait before another try after
# a failure, or before another replica takes over a claim whose indexer died.
_LEASE = 10.0
_MAX_BACKOFF = 300.0


class LogIndexer:
    """Indexes the queued logs of finished steps (``pipeline.log_index_queue``) in the
    background: woken by a report that queued one (:meth:`wake`), else every ``poll`` seconds
    (other replicas' reports, retries). A log S3 cannot give now is retried with backoff (10 s
    doubling to 5 min); a log that no longer exists is indexed as empty."""

    def __init__(self, pool: Pool, s3: Any, max_bytes: int, poll: float = 5.0, batch: int = 20) -> None:
        self.pool = pool
        self.s3 = s3
        self.max_bytes = max_bytes
        self.poll = poll
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="log-indexer")
        metrics.add_refresher(self.refresh_backlog)

    async def refresh_backlog(self) -> None:
        """``forge_pipeline_log_index_pending`` and ``..._oldest_seconds``, read at scrape time: a
        backlog that grows (S3 unreachable for the service) is the one to alert on."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(queued_at)), 0)::float8 AS oldest"
                " FROM pipeline.log_index_queue"
            )
            row = await cur.fetchone()
        if row is not None:
            LOG_INDEX_PENDING.set(row["n"])
            LOG_INDEX_OLDEST.set(row["oldest"])

    async def stop(self) -> None:
        metrics.remove_refresher(self.refresh_backlog)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self.tick() == self.batch
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("log_index_loop_error", error=str(exc))
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)

    async def tick(self) -> int:
        """Index one batch of due logs; how many were claimed."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_SQL_CLAIM, {"limit": self.batch, "lease": _LEASE, "max_backoff": _MAX_BACKOFF})
            claimed = await cur.fetchall()
        if not claimed:
            return 0
        async with self.s3.client() as client:
            for step_id, attempts, run_id, repository, stored, phase, project, name in claimed:
                key = stored or live.log_key(run_id, phase, project, name)
                try:
                    lines = await self._lines(client, key)
                except Exception as exc:  # noqa: BLE001 - S3 unavailable: retried after the backoff
                    log.warning("log_index_failed", step_id=step_id, attempts=attempts, error=str(exc))
                    continue
                await _store_lines(self.pool, step_id, run_id, repository, lines, attempts)
        return len(claimed)

    async def _lines(self, client: Any, key: str) -> list[str]:
        if self.max_bytes <= 0:  # FORGE_SEARCH_LOG_INDEX_BYTES=0: logs are not indexed
            return []
        try:
            got = await live.read_object(client, self.s3.bucket, key, f"bytes=0-{self.max_bytes - 1}")
        except live.RangeNotSatisfiable:  # an empty log
            return []
        return split_lines(got[0], got[1] > len(got[0])) if got is not None else []


async def _store_lines(pool: Pool, step_id: str, run_id: str, repository: str, lines: list[str], attempts: int) -> None:
    """The step's lines replace those it had, and its queue row goes, in one transaction; nothing
    when the claim no longer holds (whoever holds it now indexes the step)."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(_SQL_DONE, (step_id, attempts))
        if await cur.fetchone() is None:
            return
        await conn.execute("DELETE FROM pipeline.log_lines WHERE step_id = %s", (step_id,))
        if lines:
            copy_sql = "COPY pipeline.log_lines (step_id, run_id, repository, line_number, line) FROM STDIN"
            async with conn.cursor().copy(copy_sql) as copy:
                for number, line in enumerate(lines, start=1):
                    await copy.write_row((step_id, run_id, repository, number, line))


# --- queries ---------------------------------------------------------------------------------------


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
    text = query_text(q)
    if repository is not None:
        domain.validate_repository(repository)
    since_at = domain.parse_timestamp(since, "since") if since is not None else None
    query = LogSearch(q=text, repository=repository, since=since_at, limit=page_limit(limit))
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


# Two plans for one page, newest first, then by step and line (docs/performance.md, "Search"):
#
# 1. the newest ``probe`` lines that pass the filters, read from the top of an index in the
#    result order (migration 0130), checked for the words: when at least a page (plus one) of
#    them match, the page is exactly those, whatever the word. A word on 20% of lines needs ~100
#    lines read, where sorting its every match took hundreds of ms. When some matched but not a
#    page, a second, longer probe sized by the density seen (at most _MAX_PROBE lines);
# 2. otherwise the word is rare among recent lines: every match from the GIN index (0080),
#    sorted. MATERIALIZED keeps the planner from walking the order index for a word it wrongly
#    believes common (a rare word has no statistics), which took 126 ms for one match.
# A rare word pays for one probe of 1,000 lines (~0.4 ms) before its GIN query.
#
# Each statement has one plan whatever the words (the forms of the filters below see to it), so
# they are prepared like any other (planning both cost more than running them for a rare word);
# the limits are literals, planned with their values. The keyset mixes directions, so it is
# spelt out; ``indexed_at <= at`` lets the index walk start at the cursor.
_PROBE_LINES = 1000
_PROBE_PER_RESULT = 50
_MAX_PROBE = 20000

_SQL_RECENT_MATCHES = """
SELECT l.indexed_at, l.step_id, l.line_number, l.run_id, l.repository, l.line
FROM (SELECT indexed_at, step_id, line_number, run_id, repository, line, words
      FROM pipeline.log_lines l WHERE {filters}
      ORDER BY {repository}indexed_at DESC, step_id, line_number LIMIT {probe}) l
WHERE l.words @@ websearch_to_tsquery('simple', %(q)s)
ORDER BY l.indexed_at DESC, l.step_id, l.line_number
LIMIT {limit}
"""
_SQL_ALL_MATCHES = """
WITH matches AS MATERIALIZED (
    SELECT indexed_at, step_id, line_number, run_id, repository, line FROM pipeline.log_lines l
    WHERE l.words @@ websearch_to_tsquery('simple', %(q)s) AND {filters}
)
SELECT * FROM matches ORDER BY indexed_at DESC, step_id, line_number LIMIT {limit}
"""
# The page's lines with the names of their steps (at most a page of rows to join).
_SQL_PAGE = """
WITH page AS MATERIALIZED ({matches})
SELECT page.indexed_at, page.step_id::text, page.line_number, page.run_id::text, page.repository, page.line,
       p.name, t.project_name, s.name
FROM page
JOIN pipeline.steps s ON s.id = page.step_id
JOIN pipeline.tasks t ON t.id = s.task_id
JOIN pipeline.phases p ON p.id = t.phase_id
ORDER BY page.indexed_at DESC, page.step_id, page.line_number
"""
# In the walk, a repository is a range of one value, ordered by first: with ``=`` the planner drops
# the constant from the order and may walk the all-repositories index, filtering, from the newest
# line down to an old repository's lines (328 ms p50 for the bench's oldest repository); a range
# keeps the order only the repository's own index gives without sorting.
# In the word-index plan, the repository is compared as an expression no index holds: else the
# planner, thinking a word it has no statistics for is on 2,000 lines, ANDs the word index with
# the repository's 40,000 entries of the order index (25 ms, where the word alone takes 0.1 ms).
_REPOSITORY = {
    "walk": "l.repository >= %(repository)s AND l.repository <= %(repository)s",
    "words": "(l.repository || '') = %(repository)s",
}
_FILTERS = {
    "repository": "",  # by plan: _REPOSITORY
    "since": "l.indexed_at >= %(since)s",
    "at": "l.indexed_at <= %(at)s AND (l.indexed_at < %(at)s"
    " OR (l.step_id, l.line_number) > (%(step)s::uuid, %(line)s::integer))",
}


def _log_statement(template: str, params: dict[str, Any]) -> sql.Composed:
    """``template`` with the conditions of the filters given (absent ones leave no trace, so
    that the planner sees exactly the filters that apply)."""
    walk = template is _SQL_RECENT_MATCHES
    conditions = [
        sql.SQL(condition or _REPOSITORY["walk" if walk else "words"])
        for name, condition in _FILTERS.items()
        if params[name] is not None
    ]
    filters = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")
    fields = {"filters": filters, "limit": sql.Literal(params["limit"])}
    if walk:
        fields["repository"] = sql.SQL("repository, " if params["repository"] is not None else "")
        fields["probe"] = sql.Literal(params["probe"])
    return sql.SQL(_SQL_PAGE).format(matches=sql.SQL(template).format(**fields))


async def search_logs(pool: Pool, query: LogSearch) -> LogResults:
    at, step, line = query.after if query.after is not None else (None, None, None)
    wanted = query.limit + 1
    probe = max(_PROBE_LINES, _PROBE_PER_RESULT * wanted)
    params: dict[str, Any] = {
        "q": query.q,
        "repository": query.repository,
        "since": query.since,
        "at": at,
        "step": step,
        "line": line,
        "limit": wanted,
        "probe": probe,
    }
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_log_statement(_SQL_RECENT_MATCHES, params), params)
        rows = await cur.fetchall()
        if 0 < len(rows) < wanted:
            # Twice the lines the density seen says a page needs.
            longer = -(-2 * probe * wanted // len(rows))
            if longer <= _MAX_PROBE:
                longer_params = {**params, "probe": longer}
                await cur.execute(_log_statement(_SQL_RECENT_MATCHES, longer_params), longer_params, prepare=False)
                rows = await cur.fetchall()
        if len(rows) < wanted:
            await cur.execute(_log_statement(_SQL_ALL_MATCHES, params), params)
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


# --- GET /v1/search: runs and releases ------------------------------------------------------------
#
# Runs come from this service's database, releases from the release service's search (its
# GET /v1/releases/search, called with the caller's token, so that its own permission and
# repository checks apply). Both are newest first by (created_at, id); a page asks each for the
# ``limit + 1`` items after the position of the previous page's last item and keeps the newest
# ``limit`` of the two lists merged: the cursor is that position (forge_common.search).

SEARCH_TYPES = ("runs", "releases")
RELEASES_KEY = "pipeline.release_search"


class Search(msgspec.Struct, frozen=True):
    q: str
    types: tuple[str, ...]  # of SEARCH_TYPES
    repository: str | None
    limit: int
    after: tuple[dt.datetime, str] | None = None

    def scope(self) -> str:
        return cursor.fingerprint("search", q=self.q, repository=self.repository or "", types=",".join(self.types))


def parse_search(
    q: str | None, search_type: str | None, repository: str | None, limit: str | None, after: str | None
) -> Search:
    text = query_text(q)
    if search_type is not None and search_type not in SEARCH_TYPES:
        raise InvalidRequest(
            f"type must be one of {', '.join(SEARCH_TYPES)} (or absent: both)",
            {"field": "type", "value": search_type[:50]},
        )
    if repository is not None:
        domain.validate_repository(repository)
    types = (search_type,) if search_type is not None else SEARCH_TYPES
    query = Search(q=text, types=types, repository=repository, limit=page_limit(limit))
    if after is None:
        return query
    key = cursor.decode(after, query.scope())
    try:
        position = (dt.datetime.fromisoformat(str(key[0])), str(uuid.UUID(str(key[1]))))
    except (ValueError, IndexError, TypeError):
        raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None
    return msgspec.structs.replace(query, after=position)


class RunHit(msgspec.Struct, kw_only=True, tag_field="type", tag="run"):
    """A run found by a search (``type``: ``run``)."""

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


class SearchResults(msgspec.Struct, kw_only=True):
    """One page of matching runs and releases, newest first; ``type`` tells which each is."""

    example: ClassVar[dict[str, Any]] = {
        "results": [
            {**ReleaseSearchResults.example["results"][0], "created_at": "2025-10-05T12:09:00Z"},
            {
                "type": "run",
                "id": "0b5f2a4e-8c1d-4e7a-9f3b-2d6c8e1a4b7f",
                "repository": "acme/shop",
                "branch": "main",
                "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "tag": None,
                "status": "success",
                "triggered_by": "dev@acme.io",
                "error": None,
                "created_at": "2025-10-05T12:03:00Z",
                "matched": ["commit"],
                "url": "/v1/runs/0b5f2a4e-8c1d-4e7a-9f3b-2d6c8e1a4b7f",
            },
        ],
        "next_cursor": "WzEsImFiYyIsWyIyMDI1Il1d",
    }
    results: list[RunHit | ReleaseHit]
    next_cursor: str | None = None


class ReleaseSearch:
    """The release service's ``GET /v1/releases/search``, for the releases of a merged page."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    async def after(self, query: Search, token: str) -> list[ReleaseHit]:
        """The ``limit + 1`` newest matching releases after the query's position."""
        params = {"q": query.q, "limit": str(query.limit + 1)}
        if query.repository is not None:
            params["repository"] = query.repository
        if query.after is not None:
            params["cursor"] = release_cursor(query.q, query.repository, *query.after)
        try:
            resp = await self.client.get("/v1/releases/search", token=token, params=params)
        except (BadGateway, GatewayTimeout) as exc:
            raise unavailable("the release service", exc.message) from exc
        if resp.status == 503:
            raise unavailable("the release service", resp.error_code() or "")
        if resp.status == 200:
            try:
                return msgspec.convert(resp.body, ReleaseSearchResults).results
            except msgspec.ValidationError:
                pass
        raise BadGateway(
            "the release service did not answer the search",
            {"upstream_status": resp.status, "upstream_error": resp.error_code()},
        )

    async def close(self) -> None:
        await self.client.close()


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


async def _runs_after(pool: Pool, query: Search) -> list[RunHit]:
    """The ``limit + 1`` newest matching runs after the query's position."""
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
    return [
        RunHit(
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
        for row in rows
    ]


def _position(hit: RunHit | ReleaseHit) -> tuple[dt.datetime, str]:
    return dt.datetime.fromisoformat(hit.created_at), hit.id


async def search(pool: Pool, releases: ReleaseSearch, query: Search, token: str) -> SearchResults:
    """One page of runs and releases, the two sources asked at once."""

    async def no_hits() -> list[Any]:
        return []

    runs, found = await asyncio.gather(
        _runs_after(pool, query) if "runs" in query.types else no_hits(),
        releases.after(query, token) if "releases" in query.types else no_hits(),
    )
    merged: list[RunHit | ReleaseHit] = sorted([*runs, *found], key=_position, reverse=True)
    next_cursor = None
    if len(merged) > query.limit:
        at, last_id = _position(merged[query.limit - 1])
        next_cursor = cursor.encode(query.scope(), [at.isoformat(), last_id])
    return SearchResults(results=merged[: query.limit], next_cursor=next_cursor)
