"""SQL of the release service. Every function takes the caller's connection; the caller owns
the transaction (see :mod:`forge_release.service`).

Repository and project names are case-insensitive: every lookup compares the lower-cased
generated ``repository_key``/``project_key`` columns, which the keys and indexes are on."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from .domain import AliasRow, NewRelease

__all__ = [
    "bump_counter",
    "count_and_page",
    "delete_alias",
    "existing_and_aliases",
    "find_by_commit",
    "get_aliases",
    "insert_release",
    "lock_project",
    "move_alias",
    "put_alias",
    "release_by_alias",
    "release_by_id",
    "release_by_number",
    "release_by_sha_prefix",
    "releases_by_sha_prefix",
]

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


async def bump_counter(conn: Conn, repository: str, project: str) -> tuple[int, str, str]:
    """Next release number of the project, and its names as first given (names are
    case-insensitive). The row lock taken here is held until the transaction ends: creates (and
    alias changes) of one project run one at a time."""
    cur = await conn.execute(
        "INSERT INTO release.project_counters AS c (repository, project, last_number) VALUES (%s, %s, 1) "
        "ON CONFLICT (repository_key, project_key) DO UPDATE SET last_number = c.last_number + 1 "
        "RETURNING last_number, repository, project",
        (repository, project),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["last_number"]), str(row["repository"]), str(row["project"])


async def lock_project(conn: Conn, repository: str, project: str) -> bool:
    """Take the project's lock without numbering anything; False when it has no release."""
    cur = await conn.execute(
        "SELECT last_number FROM release.project_counters WHERE repository_key = lower(%s) AND project_key = lower(%s) FOR UPDATE",
        (repository, project),
    )
    return await cur.fetchone() is not None


async def find_by_commit(conn: Conn, repository: str, project: str, commit_sha: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT id::text AS id, release_number FROM release.releases "
        "WHERE repository_key = lower(%s) AND project_key = lower(%s) AND commit_sha = %s",
        (repository, project, commit_sha),
    )
    return await cur.fetchone()


async def get_aliases(conn: Conn, repository: str, project: str, aliases: list[str]) -> dict[str, AliasRow]:
    cur = await conn.execute(
        "SELECT l.alias, l.alias_type::text AS alias_type, l.release_id::text AS release_id, r.release_number "
        "FROM release.aliases l JOIN release.releases r ON r.id = l.release_id "
        "WHERE l.repository_key = lower(%s) AND l.project_key = lower(%s) AND l.alias = ANY(%s)",
        (repository, project, aliases),
    )
    return {
        row["alias"]: AliasRow(row["alias"], row["alias_type"], row["release_id"], int(row["release_number"]))
        for row in await cur.fetchall()
    }


async def insert_release(
    conn: Conn,
    release: NewRelease,
    number: int,
    oci_uri: str,
    oci_digest: str,
    aliases: list[tuple[str, str]],
) -> None:
    """Release, trigger, artifacts and aliases in one statement (one round trip while the
    project's lock is held). A branch alias already held by an older release moves here."""
    t = release.trigger
    arts = release.artifacts
    await conn.execute(
        """
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
""",
        {
            "id": release.id,
            "repository": release.repository,
            "project": release.project,
            "sha": release.commit_sha,
            "number": number,
            "run": release.pipeline_run_id,
            "uri": oci_uri,
            "digest": oci_digest,
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
            "l_alias": [alias for alias, _ in aliases],
            "l_type": [alias_type for _, alias_type in aliases],
        },
    )


async def existing_and_aliases(
    conn: Conn, repository: str, project: str, commit_sha: str, aliases: list[str]
) -> tuple[dict[str, Any] | None, dict[str, AliasRow]]:
    """The release of this commit, if any, and who holds the given alias names: one round trip."""
    cur = await conn.execute(
        "SELECT (SELECT json_build_object('id', id, 'release_number', release_number) FROM release.releases "
        "        WHERE repository_key = lower(%(r)s) AND project_key = lower(%(p)s) AND commit_sha = %(sha)s) AS existing, "
        "       COALESCE((SELECT json_agg(json_build_object('alias', l.alias, 'alias_type', l.alias_type, "
        "                 'release_id', l.release_id, 'release_number', x.release_number)) "
        "        FROM release.aliases l JOIN release.releases x ON x.id = l.release_id "
        "        WHERE l.repository_key = lower(%(r)s) AND l.project_key = lower(%(p)s) AND l.alias = ANY(%(aliases)s)), '[]'::json) AS aliases",
        {"r": repository, "p": project, "sha": commit_sha, "aliases": aliases},
    )
    row = await cur.fetchone()
    assert row is not None
    held = {
        a["alias"]: AliasRow(a["alias"], a["alias_type"], str(a["release_id"]), int(a["release_number"]))
        for a in row["aliases"]
    }
    return row["existing"], held


async def put_alias(conn: Conn, repository: str, project: str, alias: str, release_id: str, alias_type: str) -> None:
    """Insert the alias, or (for a branch alias, already decided by the domain) move it here."""
    await conn.execute(
        "INSERT INTO release.aliases AS l (repository, project, alias, release_id, alias_type, created_at) "
        "VALUES (%s, %s, %s, %s, %s, now()) "
        "ON CONFLICT (repository_key, project_key, alias) DO UPDATE SET release_id = EXCLUDED.release_id, created_at = now() "
        "WHERE l.alias_type = 'branch' AND EXCLUDED.alias_type = 'branch'",
        (repository, project, alias, release_id, alias_type),
    )


async def move_alias(conn: Conn, repository: str, project: str, alias: str, release_id: str) -> None:
    await conn.execute(
        "UPDATE release.aliases SET release_id = %s, created_at = now() WHERE repository_key = lower(%s) AND project_key = lower(%s) AND alias = %s",
        (release_id, repository, project, alias),
    )


async def delete_alias(conn: Conn, repository: str, project: str, alias: str) -> None:
    await conn.execute(
        "DELETE FROM release.aliases WHERE repository_key = lower(%s) AND project_key = lower(%s) AND alias = %s",
        (repository, project, alias),
    )


async def release_by_id(conn: Conn, release_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(_FULL + "WHERE r.id = %s", (release_id,))
    return await cur.fetchone()


async def release_by_number(conn: Conn, repository: str, project: str, number: int) -> dict[str, Any] | None:
    cur = await conn.execute(
        _FULL + "WHERE r.repository_key = lower(%s) AND r.project_key = lower(%s) AND r.release_number = %s",
        (repository, project, number),
    )
    return await cur.fetchone()


async def releases_by_sha_prefix(
    conn: Conn, repository: str, project: str, prefix: str, limit: int
) -> list[dict[str, Any]]:
    """Releases whose commit SHA starts with ``prefix`` (hex, lower-case): an index range scan,
    since hex digits sort below 'g' in the column's "C" collation."""
    cur = await conn.execute(
        "SELECT id::text AS id, commit_sha, release_number FROM release.releases "
        "WHERE repository_key = lower(%s) AND project_key = lower(%s) AND commit_sha >= %s AND commit_sha < %s "
        "ORDER BY commit_sha LIMIT %s",
        (repository, project, prefix, prefix + "g", limit),
    )
    return await cur.fetchall()


async def release_by_sha_prefix(conn: Conn, repository: str, project: str, prefix: str) -> list[dict[str, Any]]:
    """Full rows of at most two releases matching the prefix: one is the answer, two mean ambiguous."""
    cur = await conn.execute(
        _FULL
        + "WHERE r.repository_key = lower(%s) AND r.project_key = lower(%s) AND r.commit_sha >= %s AND r.commit_sha < %s "
        "ORDER BY r.commit_sha LIMIT 2",
        (repository, project, prefix, prefix + "g"),
    )
    return await cur.fetchall()


async def release_by_alias(conn: Conn, repository: str, project: str, alias: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        _FULL
        + "WHERE r.id = (SELECT release_id FROM release.aliases WHERE repository_key = lower(%s) AND project_key = lower(%s) AND alias = %s)",
        (repository, project, alias),
    )
    return await cur.fetchone()


async def count_and_page(
    conn: Conn, repository: str, project: str, limit: int, offset: int, below: int | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """Total and one page, newest first, in one round trip (both served by releases_number_key).
    ``below``: keyset continuation (a cursor), the page starts under that release number."""
    cur = await conn.execute(
        "SELECT c.total, p.id, p.commit_sha, p.release_number, p.created_at "
        "FROM (SELECT count(*) AS total FROM release.releases WHERE repository_key = lower(%(r)s) AND project_key = lower(%(p)s)) c "
        "LEFT JOIN LATERAL (SELECT id::text AS id, commit_sha, release_number, created_at FROM release.releases "
        "  WHERE repository_key = lower(%(r)s) AND project_key = lower(%(p)s) "
        "  AND (%(b)s::bigint IS NULL OR release_number < %(b)s::bigint) "
        "  ORDER BY release_number DESC LIMIT %(l)s OFFSET %(o)s) p ON true "
        "ORDER BY p.release_number DESC",
        {"r": repository, "p": project, "l": limit, "o": offset, "b": below},
    )
    rows = await cur.fetchall()
    total = int(rows[0]["total"]) if rows else 0
    return total, [row for row in rows if row["id"] is not None]
