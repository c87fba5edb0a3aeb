"""SQL of the dispatcher: run leases and dispatch bookkeeping. The caller owns the transaction.

Status changes of runs, phases, tasks and steps go through ``service.py`` (the same use cases
the HTTP API serves); only what is the dispatcher's own lives here.
"""

from __future__ import annotations

from psycopg.rows import kwargs_row
from psycopg.types.json import Jsonb

from .records import ArtifactRow, Dispatched, DispatchRun, LeaseState, Publication, TaskState
from .store import Conn

__all__ = [
    "claim_runs",
    "dispatch_publications",
    "finish_publication",
    "mark_dispatched",
    "mark_release_evaluated",
    "record_artifact",
    "record_build_publication",
    "renew_leases",
    "run_artifacts",
    "run_for_dispatch",
]

# What a run's driver reads of it (records.DispatchRun).
_DISPATCH_COLUMNS = """r.id::text AS id, r.repository, r.branch, r.commit_sha, r.tag, r.triggered_by,
    r.triggered_by_id, r.status::text AS status, r.lease_owner, r.discovered_at, r.release_triggers,
    r.release_evaluated_at, r.trace_context"""


async def claim_runs(conn: Conn, owner: str, ttl: float, limit: int, exclude: list[str]) -> list[DispatchRun]:
    """Lease up to ``limit`` runs nobody drives: active runs with no or an expired lease,
    successful runs whose release triggers were not evaluated yet, and successful runs with an
    artifact publication still to make (a tag pushed after the build). ``SKIP LOCKED`` lets several
    replicas claim at once without blocking or taking the same run. A pending run becomes
    ``running`` as it is claimed (its driver starts discovery at once), and each claimed run is
    returned as its driver needs it, so neither takes a transaction or a read of its own."""
    cur = conn.cursor(row_factory=kwargs_row(DispatchRun))
    await cur.execute(
        f"""
        WITH candidates AS (
            (SELECT id, created_at FROM pipeline.runs
             WHERE status IN ('pending', 'running')
               AND (lease_expires_at IS NULL OR lease_expires_at < now())
             ORDER BY lease_expires_at NULLS FIRST LIMIT %(limit)s)
            UNION ALL
            (SELECT id, created_at FROM pipeline.runs
             WHERE status = 'success' AND release_evaluated_at IS NULL
               AND (lease_expires_at IS NULL OR lease_expires_at < now())
               AND completed_at > now() - interval '1 day'
             ORDER BY completed_at LIMIT %(limit)s)
            UNION  -- not ALL: a run may be in both of the last two sets
            -- from the (few) pending publications, by their partial index, to their runs
            (SELECT DISTINCT r.id, r.created_at
             FROM pipeline.artifact_publications p JOIN pipeline.runs r ON r.id = p.run_id
             WHERE p.status = 'pending' AND r.status = 'success'
               AND (r.lease_expires_at IS NULL OR r.lease_expires_at < now())
             LIMIT %(limit)s)
        ),
        claimable AS (
            SELECT r.id FROM pipeline.runs r JOIN candidates c ON c.id = r.id
            WHERE NOT (r.id = ANY(%(exclude)s::uuid[]))
            ORDER BY c.created_at LIMIT %(limit)s
            FOR UPDATE OF r SKIP LOCKED
        )
        UPDATE pipeline.runs r SET lease_owner = %(owner)s, lease_expires_at = now() + make_interval(secs => %(ttl)s),
            status = CASE WHEN r.status = 'pending' THEN 'running' ELSE r.status END,
            updated_at = CASE WHEN r.status = 'pending' THEN now() ELSE r.updated_at END
        FROM claimable WHERE r.id = claimable.id
          AND (r.lease_expires_at IS NULL OR r.lease_expires_at < now())
        RETURNING {_DISPATCH_COLUMNS}
        """,
        {"owner": owner, "ttl": ttl, "limit": limit, "exclude": exclude},
    )
    return await cur.fetchall()


async def renew_leases(conn: Conn, owner: str, ttl: float, run_ids: list[str]) -> dict[str, LeaseState]:
    """Extend this replica's leases; returns each run's owner and status as they were before,
    so a driver whose run was taken over (owner changed) stops."""
    cur = conn.cursor(row_factory=kwargs_row(LeaseState))
    await cur.execute(
        """
        WITH renewed AS (
            UPDATE pipeline.runs SET lease_expires_at = now() + make_interval(secs => %(ttl)s)
            WHERE id = ANY(%(ids)s::uuid[]) AND lease_owner = %(owner)s
              AND status IN ('pending', 'running', 'success')
            RETURNING id
        )
        SELECT r.id::text AS id, r.lease_owner, r.status::text AS status
        FROM pipeline.runs r WHERE r.id = ANY(%(ids)s::uuid[])
        """,
        {"owner": owner, "ttl": ttl, "ids": run_ids},
    )
    return {r.id: r for r in await cur.fetchall()}


async def release_lease(conn: Conn, owner: str, run_id: str) -> None:
    await conn.execute(
        "UPDATE pipeline.runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = %s AND lease_owner = %s",
        (run_id, owner),
    )


async def run_for_dispatch(conn: Conn, run_id: str) -> DispatchRun | None:
    cur = conn.cursor(row_factory=kwargs_row(DispatchRun))
    await cur.execute(
        f"""
        SELECT {_DISPATCH_COLUMNS}
        FROM pipeline.runs r WHERE r.id = %s
        """,
        (run_id,),
    )
    return await cur.fetchone()


async def mark_dispatched(conn: Conn, task_ids: list[str]) -> dict[str, Dispatched]:
    """Record the first dispatch of each task, and its dispatch attempt id (kept when the job
    is re-published: the message a worker may already hold carries the first one)."""
    cur = conn.cursor(row_factory=kwargs_row(Dispatched))
    await cur.execute(
        """
        UPDATE pipeline.tasks SET dispatched_at = coalesce(dispatched_at, now()),
            dispatch_attempt = coalesce(dispatch_attempt, replace(gen_random_uuid()::text, '-', ''))
        WHERE id = ANY(%s::uuid[])
        RETURNING id::text AS id, dispatched_at, now() AS now, dispatch_attempt AS attempt
        """,
        (task_ids,),
    )
    return {r.id: r for r in await cur.fetchall()}


async def task_states(conn: Conn, task_ids: list[str]) -> dict[str, TaskState]:
    cur = conn.cursor(row_factory=kwargs_row(TaskState))
    await cur.execute(
        "SELECT id::text AS id, status::text AS status, error FROM pipeline.tasks WHERE id = ANY(%s::uuid[])",
        (task_ids,),
    )
    return {r.id: r for r in await cur.fetchall()}


async def run_status(conn: Conn, run_id: str) -> str | None:
    cur = await conn.execute("SELECT status::text AS status FROM pipeline.runs WHERE id = %s", (run_id,))
    row = await cur.fetchone()
    return str(row["status"]) if row else None


async def mark_release_evaluated(conn: Conn, run_id: str, owner: str) -> bool:
    """True for the one caller that evaluates this run's release triggers; ``owner``'s lease on
    the run ends with it (what is left, the release job, is queued in the same transaction): one
    write of the row, whose lease column and the partial index of unevaluated runs both change."""
    cur = await conn.execute(
        """UPDATE pipeline.runs SET release_evaluated_at = now(),
               lease_owner = CASE WHEN lease_owner = %(owner)s THEN NULL ELSE lease_owner END,
               lease_expires_at = CASE WHEN lease_owner = %(owner)s THEN NULL ELSE lease_expires_at END
           WHERE id = %(id)s AND release_evaluated_at IS NULL
           RETURNING id""",
        {"id": run_id, "owner": owner},
    )
    return await cur.fetchone() is not None


async def fail_phase_if_open(conn: Conn, phase_id: str) -> None:
    await conn.execute(
        """UPDATE pipeline.phases SET status = 'failed', started_at = coalesce(started_at, now()),
               completed_at = now()
           WHERE id = %s AND status IN ('pending', 'running')""",
        (phase_id,),
    )


async def run_artifacts(conn: Conn, run_id: str) -> list[ArtifactRow]:
    """The run's artifacts with their steps' statuses (by ``artifacts_run_name_key``)."""
    cur = conn.cursor(row_factory=kwargs_row(ArtifactRow))
    await cur.execute(
        """
        SELECT a.id::text AS id, a.task_id::text AS task_id, a.project, a.project_path, a.name, a.artifact_type,
               a.build, a.path, a.publish, a.timeout_seconds, s.status::text AS status, a.digest, a.size,
               a.tracking_oci_uri, a.published_uris, a.error
        FROM pipeline.artifacts a JOIN pipeline.steps s ON s.id = a.id
        WHERE a.run_id = %s ORDER BY a.project, a.name
        """,
        (run_id,),
    )
    return await cur.fetchall()


async def record_artifact(
    conn: Conn,
    artifact_id: str,
    *,
    digest: str | None,
    size: int | None,
    tracking_oci_uri: str | None,
    published_uris: list[str],
    error: str | None,
) -> None:
    """What an artifact job answered; the caller holds the run lock (``store.lock_run``), which
    also bumps the tree version so ``GET /v1/runs/{id}`` shows it."""
    await conn.execute(
        """UPDATE pipeline.artifacts SET digest = %s, size = %s, tracking_oci_uri = %s, published_uris = %s,
               error = %s WHERE id = %s""",
        (digest, size, tracking_oci_uri, Jsonb(published_uris), error, artifact_id),
    )


async def record_build_publication(conn: Conn, artifact_id: str, run_id: str, tag: str, uri: str | None) -> None:
    """The tag an artifact job published to itself (a tag run): nothing left to publish for it."""
    await conn.execute(
        """INSERT INTO pipeline.artifact_publications (id, run_id, artifact_id, tag, status, by_build, uri, completed_at)
           VALUES (gen_random_uuid(), %s, %s, %s, 'success', true, %s, now())
           ON CONFLICT (artifact_id, destination, tag) DO NOTHING""",
        (run_id, artifact_id, tag, uri),
    )


async def dispatch_publications(conn: Conn, run_id: str) -> list[Publication]:
    """The run's pending publications, each with a fresh dispatch attempt id (a job of an earlier
    attempt still answers, but to nobody: publishing twice is harmless, see the worker)."""
    cur = conn.cursor(row_factory=kwargs_row(Publication))
    await cur.execute(
        """
        UPDATE pipeline.artifact_publications p
        SET dispatch_attempt = replace(gen_random_uuid()::text, '-', ''), dispatched_at = now()
        FROM pipeline.artifacts a
        WHERE p.run_id = %s AND p.status = 'pending' AND a.id = p.artifact_id
        RETURNING p.id::text AS id, p.artifact_id::text AS artifact_id, p.tag, p.dispatch_attempt AS attempt,
                  a.project, a.name, a.artifact_type, a.digest, a.tracking_oci_uri
        """,
        (run_id,),
    )
    return sorted(await cur.fetchall(), key=lambda p: (p.project, p.name, p.tag))


async def finish_publication(conn: Conn, publication: Publication, uri: str | None, error: str | None) -> bool:
    """Record a publication's outcome (once: False when it was no longer pending) and show it on
    its artifact: the asset's URL joins ``published_uris``, or the error becomes the artifact's
    ``error`` (its status stays ``success``: it was built). The caller holds the run lock."""
    cur = await conn.execute(
        """UPDATE pipeline.artifact_publications
           SET status = %s, uri = %s, error = %s, completed_at = now()
           WHERE id = %s AND status = 'pending' RETURNING id""",
        ("success" if error is None else "failed", uri, error, publication.id),
    )
    if await cur.fetchone() is None:
        return False
    if error is None:
        # A retried publication that succeeds clears the error its failure left.
        await conn.execute(
            """UPDATE pipeline.artifacts SET
                   published_uris = CASE WHEN published_uris @> %(uri)s THEN published_uris
                                         ELSE published_uris || %(uri)s END,
                   error = CASE WHEN starts_with(error, %(prefix)s) THEN NULL ELSE error END
               WHERE id = %(id)s""",
            {"uri": Jsonb([uri]), "prefix": _failure_prefix(publication.tag), "id": publication.artifact_id},
        )
    else:
        await conn.execute(
            "UPDATE pipeline.artifacts SET error = %s WHERE id = %s",
            (f"{_failure_prefix(publication.tag)}{error}", publication.artifact_id),
        )
    return True


def _failure_prefix(tag: str) -> str:
    return f"github-release of tag {tag}: "
