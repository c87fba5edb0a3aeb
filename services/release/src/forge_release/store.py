"""SQL access to schema ``release``; the unit of work owns the transaction and the outbox.

Rows become the typed records of :mod:`forge_release.domain` here and nowhere else. Repository
and project names are case-insensitive: every lookup compares the lower-cased generated
``repository_key``/``project_key`` columns, which the keys and indexes are on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.rows import DictRow, tuple_row

from forge_common import github
from forge_common.db import Pool
from forge_common.events import EventData
from forge_common.outbox import add_event

from .domain import (
    AliasRef,
    AliasRow,
    Artifact,
    CreatedRelease,
    ProjectCounter,
    Release,
    ReleaseKey,
    ReleaseSummary,
    SearchHit,
    SearchQuery,
    Trigger,
)

__all__ = ["SCHEMA", "PgReleases", "Transaction", "UnitOfWork"]

SCHEMA = "release"

Conn = AsyncConnection[DictRow]

# The Get Release shape in one statement: trigger joined, artifacts and aliases aggregated
# (no N+1). Aliases: tags, branches, custom, then the numeric one.
_FULL = """
SELECT r.id::text AS id, r.repository, r.project, r.commit_sha, r.release_number,
       r.pipeline_run_id::text AS pipeline_run_id, r.oci_uri, r.oci_digest, r.created_at, r.created_by,
       r.created_by_id, t.trigger_type::text AS trigger_type, t.branch, t.tag, t.triggered_by, t.triggered_by_id,
       COALESCE((SELECT json_agg(json_build_object(
                    'name', a.name, 'type', a.artifact_type, 'tracking_oci_uri', a.tracking_oci_uri,
                    'primary_published_uri', a.primary_published_uri, 'digest', a.digest, 'size', a.size)
                    ORDER BY a.position)
                 FROM release.artifacts a WHERE a.release_id = r.id), '[]'::json) AS artifacts,
       COALESCE((SELECT json_agg(json_build_object('alias', l.alias, 'alias_type', l.alias_type)
                    ORDER BY (l.alias_type = 'numeric'), l.alias_type, l.alias)
                 FROM release.aliases l WHERE l.release_id = r.id), '[]'::json) AS aliases
FROM release.releases r
JOIN release.triggers t ON t.release_id = r.id
"""

_SQL_BUMP_COUNTER = """
INSERT INTO release.project_counters AS c (repository, project, last_number) VALUES (%s, %s, 1)
ON CONFLICT (repository_key, project_key) DO UPDATE SET last_number = c.last_number + 1
RETURNING last_number, repository, project
"""

_SQL_LOCK_PROJECT = """
SELECT last_number FROM release.project_counters
 WHERE repository_key = lower(%s) AND project_key = lower(%s) FOR UPDATE
"""

_SQL_FIND_BY_COMMIT = """
SELECT id::text AS id, release_number FROM release.releases
 WHERE repository_key = lower(%s) AND project_key = lower(%s) AND commit_sha = %s
"""

_SQL_ALIASES = """
SELECT l.alias, l.alias_type::text AS alias_type, l.release_id::text AS release_id, r.release_number
  FROM release.aliases l JOIN release.releases r ON r.id = l.release_id
 WHERE l.repository_key = lower(%s) AND l.project_key = lower(%s) AND l.alias = ANY(%s)
"""

_SQL_EXISTING_AND_ALIASES = """
SELECT (SELECT json_build_object('id', id, 'release_number', release_number) FROM release.releases
         WHERE repository_key = lower(%(r)s) AND project_key = lower(%(p)s) AND commit_sha = %(sha)s) AS existing,
       COALESCE((SELECT json_agg(json_build_object('alias', l.alias, 'alias_type', l.alias_type,
                  'release_id', l.release_id, 'release_number', x.release_number))
         FROM release.aliases l JOIN release.releases x ON x.id = l.release_id
         WHERE l.repository_key = lower(%(r)s) AND l.project_key = lower(%(p)s) AND l.alias = ANY(%(aliases)s)),
         '[]'::json) AS aliases
"""

# Release, trigger, artifacts and aliases in one statement (one round trip while the project's
# lock is held). A branch alias already held by an older release moves here.
_SQL_INSERT_RELEASE = """
WITH r AS (
    INSERT INTO release.releases (id, repository, project, commit_sha, release_number, pipeline_run_id,
                                  oci_uri, oci_digest, created_by, created_at, created_by_id)
    VALUES (%(id)s, %(repository)s, %(project)s, %(sha)s, %(number)s, %(run)s, %(uri)s, %(digest)s, %(by)s, %(at)s,
            %(by_id)s)
    RETURNING id
), t AS (
    INSERT INTO release.triggers (release_id, trigger_type, branch, tag, triggered_by, triggered_by_id)
    SELECT r.id, %(ttype)s::release.trigger_type, %(branch)s, %(tag)s, %(tby)s, %(tby_id)s FROM r
), a AS (
    INSERT INTO release.artifacts (release_id, name, position, artifact_type, tracking_oci_uri, primary_published_uri,
                                   digest, size)
    SELECT r.id, x.name, x.position, x.type::release.artifact_type, x.tracking, x.published, x.digest, x.size
    FROM r, unnest(%(a_name)s::text[], %(a_pos)s::int[], %(a_type)s::text[], %(a_track)s::text[], %(a_pub)s::text[],
                   %(a_digest)s::text[], %(a_size)s::bigint[])
         AS x(name, position, type, tracking, published, digest, size)
)
INSERT INTO release.aliases AS l (repository, project, alias, release_id, alias_type, created_at)
SELECT %(repository)s, %(project)s, y.alias, r.id, y.type::release.alias_type, now()
FROM r, unnest(%(l_alias)s::text[], %(l_type)s::text[]) AS y(alias, type)
ON CONFLICT (repository_key, project_key, alias) DO UPDATE SET release_id = EXCLUDED.release_id, created_at = now()
WHERE l.alias_type = 'branch' AND EXCLUDED.alias_type = 'branch'
"""

_SQL_PUT_ALIAS = """
INSERT INTO release.aliases AS l (repository, project, alias, release_id, alias_type, created_at)
VALUES (%s, %s, %s, %s, %s, now())
ON CONFLICT (repository_key, project_key, alias) DO UPDATE SET release_id = EXCLUDED.release_id, created_at = now()
WHERE l.alias_type = 'branch' AND EXCLUDED.alias_type = 'branch'
"""

_SQL_MOVE_ALIAS = """
UPDATE release.aliases SET release_id = %s, created_at = now()
 WHERE repository_key = lower(%s) AND project_key = lower(%s) AND alias = %s
"""

_SQL_DELETE_ALIAS = """
DELETE FROM release.aliases WHERE repository_key = lower(%s) AND project_key = lower(%s) AND alias = %s
"""

_SQL_BY_ID = _FULL + "WHERE r.id = %s"

_SQL_BY_NUMBER = _FULL + "WHERE r.repository_key = lower(%s) AND r.project_key = lower(%s) AND r.release_number = %s"

# Releases whose commit SHA starts with a (hex, lower-case) prefix: an index range scan, since
# hex digits sort below 'g' in the column's "C" collation.
_SQL_SUMMARIES_BY_SHA_PREFIX = """
SELECT id::text AS id, commit_sha, release_number, created_at FROM release.releases
 WHERE repository_key = lower(%s) AND project_key = lower(%s) AND commit_sha >= %s AND commit_sha < %s
 ORDER BY commit_sha LIMIT %s
"""

_SQL_BY_SHA_PREFIX = (
    _FULL
    + "WHERE r.repository_key = lower(%s) AND r.project_key = lower(%s) AND r.commit_sha >= %s AND r.commit_sha < %s "
    "ORDER BY r.commit_sha LIMIT 2"
)

_SQL_BY_ALIAS = (
    _FULL + "WHERE r.id = (SELECT release_id FROM release.aliases "
    "WHERE repository_key = lower(%s) AND project_key = lower(%s) AND alias = %s)"
)

# Total and one page, newest first, in one round trip (both served by releases_number_key).
# ``b``: keyset continuation (a cursor), the page starts under that release number.
_SQL_COUNT_AND_PAGE = """
SELECT c.total, p.id, p.commit_sha, p.release_number, p.created_at
FROM (SELECT count(*) AS total FROM release.releases WHERE repository_key = lower(%(r)s) AND project_key = lower(%(p)s)) c
LEFT JOIN LATERAL (SELECT id::text AS id, commit_sha, release_number, created_at FROM release.releases
  WHERE repository_key = lower(%(r)s) AND project_key = lower(%(p)s)
  AND (%(b)s::bigint IS NULL OR release_number < %(b)s::bigint)
  ORDER BY release_number DESC LIMIT %(l)s OFFSET %(o)s) p ON true
ORDER BY p.release_number DESC
"""

# ``GET /v1/releases/search``: each source of a match is one indexed arm of a UNION (migration
# 0080_search.sql); newest first, continued below (created_at, id).
_SQL_SEARCH = """
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


def _release(row: DictRow) -> Release:
    return Release(
        id=row["id"],
        repository=row["repository"],
        project=row["project"],
        commit_sha=row["commit_sha"],
        release_number=int(row["release_number"]),
        pipeline_run_id=row["pipeline_run_id"],
        oci_uri=row["oci_uri"],
        oci_digest=row["oci_digest"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        created_by_id=row["created_by_id"],
        trigger=Trigger(row["trigger_type"], row["triggered_by"], row["branch"], row["tag"], row["triggered_by_id"]),
        artifacts=tuple(
            Artifact(a["name"], a["type"], a["tracking_oci_uri"], a["primary_published_uri"], a["digest"], a["size"])
            for a in row["artifacts"]
        ),
        aliases=tuple(AliasRef(a["alias"], a["alias_type"]) for a in row["aliases"]),
    )


def _summary(row: DictRow) -> ReleaseSummary:
    return ReleaseSummary(row["id"], row["commit_sha"], int(row["release_number"]), row["created_at"])


def _alias_row(a: DictRow | dict[str, object]) -> AliasRow:
    return AliasRow(str(a["alias"]), a["alias_type"], str(a["release_id"]), int(str(a["release_number"])))  # type: ignore[arg-type]


def _insert_params(created: CreatedRelease) -> dict[str, object]:
    release, t, arts = created.release, created.release.trigger, created.release.artifacts
    return {
        "id": release.id,
        "repository": release.repository,
        "project": release.project,
        "sha": release.commit_sha,
        "number": created.number,
        "run": release.pipeline_run_id,
        "uri": created.oci_uri,
        "digest": created.oci_digest,
        "by": release.created_by,
        "by_id": release.created_by_id,
        "at": release.created_at,
        "ttype": t.trigger_type,
        "branch": t.branch,
        "tag": t.tag,
        "tby": t.triggered_by,
        "tby_id": t.triggered_by_id,
        "a_name": [a.name for a in arts],
        "a_pos": list(range(len(arts))),
        "a_type": [a.type for a in arts],
        "a_track": [a.tracking_oci_uri for a in arts],
        "a_pub": [a.primary_published_uri for a in arts],
        "a_digest": [a.digest for a in arts],
        "a_size": [a.size for a in arts],
        "l_alias": [alias for alias, _ in created.aliases],
        "l_type": [alias_type for _, alias_type in created.aliases],
    }


class PgReleases:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def bump_counter(self, repository: str, project: str) -> ProjectCounter:
        """Next release number of the project. The row lock taken here is held until the
        transaction ends: creates (and alias changes) of one project run one at a time."""
        cur = await self.conn.execute(_SQL_BUMP_COUNTER, (repository, project))
        row = await cur.fetchone()
        assert row is not None
        return ProjectCounter(int(row["last_number"]), str(row["repository"]), str(row["project"]))

    async def lock_project(self, repository: str, project: str) -> bool:
        """Take the project's lock without numbering anything; False when it has no release."""
        cur = await self.conn.execute(_SQL_LOCK_PROJECT, (repository, project))
        return await cur.fetchone() is not None

    async def find_by_commit(self, repository: str, project: str, commit_sha: str) -> ReleaseKey | None:
        cur = await self.conn.execute(_SQL_FIND_BY_COMMIT, (repository, project, commit_sha))
        row = await cur.fetchone()
        return ReleaseKey(row["id"], int(row["release_number"])) if row else None

    async def aliases(self, repository: str, project: str, names: Sequence[str]) -> dict[str, AliasRow]:
        cur = await self.conn.execute(_SQL_ALIASES, (repository, project, list(names)))
        return {row["alias"]: _alias_row(row) for row in await cur.fetchall()}

    async def existing_and_aliases(
        self, repository: str, project: str, commit_sha: str, names: Sequence[str]
    ) -> tuple[ReleaseKey | None, dict[str, AliasRow]]:
        """The release of this commit, if any, and who holds the given alias names: one round trip."""
        cur = await self.conn.execute(
            _SQL_EXISTING_AND_ALIASES, {"r": repository, "p": project, "sha": commit_sha, "aliases": list(names)}
        )
        row = await cur.fetchone()
        assert row is not None
        existing = row["existing"]
        key = ReleaseKey(str(existing["id"]), int(existing["release_number"])) if existing else None
        return key, {a["alias"]: _alias_row(a) for a in row["aliases"]}

    async def insert(self, created: CreatedRelease) -> None:
        await self.conn.execute(_SQL_INSERT_RELEASE, _insert_params(created))

    async def put_alias(self, repository: str, project: str, alias: str, release_id: str, alias_type: str) -> None:
        """Insert the alias, or (for a branch alias, already decided by the domain) move it here."""
        await self.conn.execute(_SQL_PUT_ALIAS, (repository, project, alias, release_id, alias_type))

    async def move_alias(self, repository: str, project: str, alias: str, release_id: str) -> None:
        await self.conn.execute(_SQL_MOVE_ALIAS, (release_id, repository, project, alias))

    async def delete_alias(self, repository: str, project: str, alias: str) -> None:
        await self.conn.execute(_SQL_DELETE_ALIAS, (repository, project, alias))

    async def by_id(self, release_id: str) -> Release | None:
        return await self._one(_SQL_BY_ID, (release_id,))

    async def by_number(self, repository: str, project: str, number: int) -> Release | None:
        return await self._one(_SQL_BY_NUMBER, (repository, project, number))

    async def by_alias(self, repository: str, project: str, alias: str) -> Release | None:
        return await self._one(_SQL_BY_ALIAS, (repository, project, alias))

    async def by_sha_prefix(self, repository: str, project: str, prefix: str) -> list[Release]:
        """At most two releases matching the prefix: one is the answer, two mean ambiguous."""
        cur = await self.conn.execute(_SQL_BY_SHA_PREFIX, (repository, project, prefix, prefix + "g"))
        return [_release(row) for row in await cur.fetchall()]

    async def summaries_by_sha_prefix(
        self, repository: str, project: str, prefix: str, limit: int
    ) -> list[ReleaseSummary]:
        cur = await self.conn.execute(_SQL_SUMMARIES_BY_SHA_PREFIX, (repository, project, prefix, prefix + "g", limit))
        return [_summary(row) for row in await cur.fetchall()]

    async def count_and_page(
        self, repository: str, project: str, limit: int, offset: int, below: int | None = None
    ) -> tuple[int, list[ReleaseSummary]]:
        cur = await self.conn.execute(
            _SQL_COUNT_AND_PAGE, {"r": repository, "p": project, "l": limit, "o": offset, "b": below}
        )
        rows = await cur.fetchall()
        total = int(rows[0]["total"]) if rows else 0
        return total, [_summary(row) for row in rows if row["id"] is not None]

    async def search(self, query: SearchQuery) -> list[SearchHit]:
        cur = self.conn.cursor(row_factory=tuple_row)
        params: dict[str, object] = {
            "q": query.q,
            "prefix": query.prefix,
            "repository": query.repository,
            "at": query.at,
            "id": query.after,
            "limit": query.limit,
        }
        await cur.execute(_SQL_SEARCH, params)
        return [
            SearchHit(
                release=ReleaseSummary(row[1], row[4], int(row[5]), row[0]),
                repository=row[2],
                project=row[3],
                created_by=row[6],
                branch=row[7],
                tag=row[8],
                aliases=tuple(row[10]),
                matched=tuple(row[9]),
            )
            for row in await cur.fetchall()
        ]

    async def _one(self, sql: str, params: tuple[object, ...]) -> Release | None:
        cur = await self.conn.execute(sql, params)
        row = await cur.fetchone()
        return _release(row) if row else None


class Transaction:
    """One database transaction: the releases it changes, the events it records and the GitHub
    calls it queues (both sent after the commit, by the outbox relays)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.releases = PgReleases(conn)

    async def record(self, event: EventData) -> None:
        await add_event(self.conn, SCHEMA, event)

    async def report_to_github(self, request: github.GitHubRequest) -> None:
        await github.enqueue(self.conn, SCHEMA, request)


class UnitOfWork:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Transaction]:
        """Commits when the block ends normally, rolls back when it raises."""
        async with self.pool.connection() as conn, conn.transaction():
            yield Transaction(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PgReleases]:
        async with self.pool.connection() as conn:
            yield PgReleases(conn)
