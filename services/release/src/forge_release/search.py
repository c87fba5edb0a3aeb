"""``GET /v1/releases/search?q=``: releases by commit prefix, branch, tag, alias or author
(docs/api-search.md). The pipeline service's ``GET /v1/search`` calls it for the releases of its
merged list of runs and releases (forge_common.search).

Newest first, paged by an opaque cursor (forge_common.cursor) bound to the query. Each source
of a match is one indexed arm of a UNION (migration 0080_search.sql).
"""

from __future__ import annotations

import datetime as dt
import uuid

from psycopg.rows import tuple_row

from forge_common import cursor
from forge_common.db import Pool
from forge_common.errors import InvalidRequest
from forge_common.events import isoformat
from forge_common.search import ReleaseHit, ReleasePage, page_limit, query_text, release_scope

from .domain import validate_repository

__all__ = ["search_releases"]

_SQL = """
WITH hits AS (
    SELECT id AS release_id, 'commit' AS how FROM release.releases WHERE commit_sha LIKE %(prefix)s
    UNION ALL SELECT release_id, 'branch' FROM release.triggers WHERE branch = %(q)s
    UNION ALL SELECT release_id, 'tag' FROM release.triggers WHERE tag = %(q)s
    UNION ALL SELECT release_id, 'alias' FROM release.aliases WHERE alias = %(q)s
    UNION ALL SELECT release_id, 'author' FROM release.triggers WHERE triggered_by = %(q)s
    UNION ALL SELECT id, 'author' FROM release.releases WHERE created_by = %(q)s
), grouped AS (
    SELECT release_id, array_agg(DISTINCT how ORDER BY how) AS matched FROM hits GROUP BY release_id
)
SELECT r.created_at, r.id::text, r.repository, r.project, r.commit_sha, r.release_number, r.created_by,
       t.branch, t.tag, g.matched,
       ARRAY(SELECT a.alias FROM release.aliases a WHERE a.release_id = r.id ORDER BY a.alias)
FROM grouped g
JOIN release.releases r ON r.id = g.release_id
LEFT JOIN release.triggers t ON t.release_id = r.id
WHERE (%(repository)s::text IS NULL OR r.repository_key = lower(%(repository)s))
  AND (%(at)s::timestamptz IS NULL OR (r.created_at, r.id) < (%(at)s, %(id)s::uuid))
ORDER BY r.created_at DESC, r.id DESC
LIMIT %(limit)s
"""


def _prefix(q: str) -> str | None:
    lowered = q.lower()
    if 4 <= len(lowered) <= 64 and all(c in "0123456789abcdef" for c in lowered):
        return lowered + "%"
    return None


async def search_releases(
    pool: Pool, q: str | None, repository: str | None, limit: str | None, page_cursor: str | None
) -> ReleasePage:
    text = query_text(q)
    if repository is not None:
        validate_repository(repository)
    size = page_limit(limit)
    scope = release_scope(text, repository)
    at: dt.datetime | None = None
    after: str | None = None
    if page_cursor is not None:
        key = cursor.decode(page_cursor, scope)
        try:
            at, after = dt.datetime.fromisoformat(str(key[0])), str(uuid.UUID(str(key[1])))
        except (ValueError, IndexError, TypeError):
            raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None
    params = {
        "q": text,
        "prefix": _prefix(text),
        "repository": repository,
        "at": at,
        "id": after,
        "limit": size + 1,
    }
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(_SQL, params)
        rows = await cur.fetchall()
    results = [
        ReleaseHit(
            id=row[1],
            repository=row[2],
            project=row[3],
            commit_sha=row[4],
            release_number=int(row[5]),
            created_by=row[6],
            branch=row[7],
            tag=row[8],
            aliases=list(row[10]),
            created_at=isoformat(row[0]),
            matched=list(row[9]),
            url=f"/v1/releases/{row[1]}",
        )
        for row in rows[:size]
    ]
    next_cursor = None
    if len(rows) > size:
        last = rows[size - 1]
        next_cursor = cursor.encode(scope, [last[0].isoformat(), last[1]])
    return ReleasePage(results=results, next_cursor=next_cursor)
