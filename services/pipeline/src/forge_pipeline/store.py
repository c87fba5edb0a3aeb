"""SQL of the pipeline schema. Every function takes the caller's connection; the caller owns
the transaction (``async with pool.connection() as conn, conn.transaction():``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow, tuple_row
from psycopg.types.json import Jsonb

__all__ = ["Conn"]

Conn = psycopg.AsyncConnection[DictRow]
Row = dict[str, Any]

_RUN_COLUMNS = """
    r.id::text AS id, r.repository, r.branch, r.commit_sha, r.tag, r.pull_request_number,
    r.triggered_by, r.trigger_type::text AS trigger_type, r.status::text AS status, r.error,
    r.failed_phase, r.idempotency_key, r.request_fingerprint, r.created_at, r.started_at,
    r.completed_at, r.discovered_at, r.release_triggers, r.lease_owner, r.lease_expires_at, r.tree_version
"""


async def _one(conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
    cur = await conn.execute(sql, params)
    return await cur.fetchone()


async def _all(conn: Conn, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


# --- runs ---------------------------------------------------------------------------------------


async def lock_repository(conn: Conn, repository: str) -> None:
    """Serialise run creation per repository until the transaction ends (the active-run limit)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"forge.pipeline.runs:{repository}",))


async def creation_checks(
    conn: Conn, repository: str, commit_sha: str, triggered_by: str, idempotency_key: str | None
) -> tuple[Row | None, Row | None, int]:
    """Take the repository's creation lock, then read (run with this Idempotency-Key, run for
    this commit, active runs of the repository): four statements in one round trip. The
    server runs them in order, and each read takes its snapshot after the lock is granted."""
    async with conn.pipeline():
        await lock_repository(conn, repository)
        by_key = None
        if idempotency_key is not None:
            by_key = await conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.triggered_by = %s AND r.idempotency_key = %s",
                (triggered_by, idempotency_key),
            )
        by_commit = await conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.repository = %s AND r.commit_sha = %s",
            (repository, commit_sha),
        )
        active = await conn.execute(
            "SELECT count(*) AS n FROM pipeline.runs WHERE repository = %s AND status IN ('pending', 'running')",
            (repository,),
        )
    key_row = await by_key.fetchone() if by_key is not None else None
    commit_row = await by_commit.fetchone()
    count_row = await active.fetchone()
    return key_row, commit_row, int(count_row["n"]) if count_row else 0


async def run_by_commit(conn: Conn, repository: str, commit_sha: str) -> Row | None:
    return await _one(
        conn,
        f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.repository = %s AND r.commit_sha = %s",
        (repository, commit_sha),
    )


async def insert_run(
    conn: Conn,
    *,
    run_id: str,
    repository: str,
    branch: str,
    commit_sha: str,
    triggered_by: str,
    trigger_type: str,
    tag: str | None = None,
    pull_request_number: int | None = None,
    idempotency_key: str | None = None,
    request_fingerprint: str | None = None,
) -> psycopg.AsyncCursor[DictRow]:
    """Send the insert; the stored row is read from the returned cursor (so that the caller can
    pipeline the insert with the event and the commit status)."""
    return await conn.execute(
        f"""
        INSERT INTO pipeline.runs AS r (id, repository, branch, commit_sha, tag, pull_request_number,
            triggered_by, trigger_type, idempotency_key, request_fingerprint)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        RETURNING {_RUN_COLUMNS}
        """,
        (
            run_id,
            repository,
            branch,
            commit_sha,
            tag,
            pull_request_number,
            triggered_by,
            trigger_type,
            idempotency_key,
            request_fingerprint,
        ),
    )


async def get_run(conn: Conn, run_id: str) -> Row | None:
    return await _one(conn, f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.id = %s", (run_id,))


async def lock_run(conn: Conn, run_id: str) -> Row | None:
    """The run row, locked, with its ``tree_version`` bumped.

    Every change to a run or its tree takes this first: concurrent reports of one run
    serialise, roll-ups see a consistent tree, and the version tells ``GET /v1/runs/{id}``
    that its cached body is stale. Code that changes phases/tasks/steps without calling this
    would leave stale trees in that cache.
    """
    return await _one(
        conn,
        f"UPDATE pipeline.runs AS r SET tree_version = r.tree_version + 1 WHERE r.id = %s RETURNING {_RUN_COLUMNS}",
        (run_id,),
    )


async def tree_version(conn: Conn, run_id: str) -> int | None:
    row = await _one(conn, "SELECT tree_version FROM pipeline.runs WHERE id = %s", (run_id,))
    return int(row["tree_version"]) if row else None


async def set_run_running(conn: Conn, run_id: str) -> None:
    await conn.execute(
        "UPDATE pipeline.runs SET status = 'running', updated_at = now() WHERE id = %s AND status = 'pending'",
        (run_id,),
    )


async def finish_run(
    conn: Conn, run_id: str, status: str, error: str | None = None, failed_phase: str | None = None
) -> Row:
    row = await _one(
        conn,
        f"""
        UPDATE pipeline.runs AS r SET status = %s::pipeline.run_status, error = %s, failed_phase = %s,
            completed_at = now(), updated_at = now()
        WHERE r.id = %s
        RETURNING {_RUN_COLUMNS}
        """,
        (status, error, failed_phase, run_id),
    )
    assert row is not None
    return row


async def set_run_tag(conn: Conn, run_id: str, tag: str) -> None:
    """Attach a pushed tag to the commit's run. A run that already succeeded has its release
    triggers evaluated again (``release_evaluated_at``, the dispatcher's column) so that
    ``{ tag = ... }`` rules fire for a tag pushed after the run finished."""
    await conn.execute(
        """UPDATE pipeline.runs SET tag = %s, updated_at = now(),
               release_evaluated_at = CASE WHEN status = 'success' THEN NULL ELSE release_evaluated_at END
           WHERE id = %s AND status IN ('pending', 'running', 'success')""",
        (tag, run_id),
    )


async def close_open_work(conn: Conn, run_id: str) -> None:
    """Pending phases/tasks/steps become ``skipped``; running ones stop (``cancelled`` tasks and
    steps, ``skipped`` phases, since a phase has no cancelled state)."""
    await conn.execute(
        """
        UPDATE pipeline.steps SET
            status = CASE WHEN status = 'pending' THEN 'skipped' ELSE 'cancelled' END::pipeline.step_status,
            completed_at = CASE WHEN status = 'running' THEN now() ELSE completed_at END
        WHERE run_id = %s AND status IN ('pending', 'running')
        """,
        (run_id,),
    )
    await conn.execute(
        """
        UPDATE pipeline.tasks SET
            status = CASE WHEN status = 'pending' THEN 'skipped' ELSE 'cancelled' END::pipeline.task_status,
            completed_at = CASE WHEN status = 'running' THEN now() ELSE completed_at END
        WHERE run_id = %s AND status IN ('pending', 'running')
        """,
        (run_id,),
    )
    await conn.execute(
        """
        UPDATE pipeline.phases SET status = 'skipped',
            completed_at = CASE WHEN status = 'running' THEN now() ELSE completed_at END
        WHERE run_id = %s AND status IN ('pending', 'running')
        """,
        (run_id,),
    )


async def skip_pending_work(conn: Conn, run_id: str) -> None:
    """What never started becomes ``skipped``; running work is left to finish and report."""
    await conn.execute(
        "UPDATE pipeline.steps SET status = 'skipped' WHERE run_id = %s AND status = 'pending'", (run_id,)
    )
    await conn.execute(
        "UPDATE pipeline.tasks SET status = 'skipped' WHERE run_id = %s AND status = 'pending'", (run_id,)
    )
    await conn.execute(
        "UPDATE pipeline.phases SET status = 'skipped' WHERE run_id = %s AND status = 'pending'", (run_id,)
    )


async def list_runs(
    conn: Conn, repository: str, branch: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Row], int]:
    where = ["repository = %(repository)s"]
    if branch is not None:
        where.append("branch = %(branch)s")
    if status is not None:
        where.append("status = %(status)s::pipeline.run_status")
    cond = " AND ".join(where)
    params = {"repository": repository, "branch": branch, "status": status, "limit": limit, "offset": offset}
    rows = await _all(
        conn,
        f"""
        SELECT id::text AS id, repository, commit_sha, status::text AS status, started_at
        FROM pipeline.runs WHERE {cond}
        ORDER BY created_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s
        """,
        params,
    )
    total_row = await _one(conn, f"SELECT count(*) AS n FROM pipeline.runs WHERE {cond}", params)
    return rows, int(total_row["n"]) if total_row else 0


# --- the tree -----------------------------------------------------------------------------------

_TREE_PHASES = """
SELECT p.id::text, p.name, p.group_number, p.status::text, p.started_at, p.completed_at
FROM pipeline.phases p WHERE p.run_id = %s ORDER BY p.group_number, p.name
"""
_TREE_TASKS = """
SELECT t.id::text, t.phase_id::text, t.project_name, t.status::text
FROM pipeline.tasks t WHERE t.run_id = %s ORDER BY t.project_name
"""
# Unordered: sorting 1,000 rows by (task, position) costs Postgres more than Python.
_TREE_STEPS = """
SELECT s.task_id::text, s.position, s.id::text, s.name, s.status::text, s.exit_code, s.logs_s3_key
FROM pipeline.steps s WHERE s.run_id = %s
"""


async def tree_rows(
    conn: Conn, run_id: str
) -> tuple[Row | None, list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The run and its phases, tasks and steps: four queries sent in one round trip, whatever
    the size of the tree; plain tuples (no per-row dict) for the thousand-step case."""
    async with conn.pipeline():
        run_cur = await conn.execute(f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.id = %s", (run_id,))
        cursors = []
        for sql in (_TREE_PHASES, _TREE_TASKS, _TREE_STEPS):
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(sql, (run_id,))
            cursors.append(cur)
    run = await run_cur.fetchone()
    phases, tasks, steps = [await c.fetchall() for c in cursors]
    return run, phases, tasks, steps


# --- discovery ----------------------------------------------------------------------------------


async def mark_discovered(conn: Conn, run_id: str, release_triggers: Any) -> None:
    await conn.execute(
        "UPDATE pipeline.runs SET discovered_at = now(), release_triggers = %s, updated_at = now() WHERE id = %s",
        (Jsonb(release_triggers) if release_triggers is not None else None, run_id),
    )


async def has_phases(conn: Conn, run_id: str) -> bool:
    return await _one(conn, "SELECT 1 FROM pipeline.phases WHERE run_id = %s LIMIT 1", (run_id,)) is not None


async def _copy(conn: Conn, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    # COPY: a 1,000-step tree is stored in a few milliseconds instead of 1,000 INSERTs.
    async with conn.cursor() as cur, cur.copy(f"COPY pipeline.{table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)


async def insert_phases(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    await _copy(conn, "phases", "id, run_id, name, group_number, timeout_seconds", rows)


async def insert_tasks(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    await _copy(conn, "tasks", "id, run_id, phase_id, project_name, project_path", rows)


async def insert_steps(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    await _copy(conn, "steps", "id, task_id, run_id, position, name, action, command, timeout_seconds", rows)


# --- tasks and steps ----------------------------------------------------------------------------

_TASK_COLUMNS = """
    t.id::text AS id, t.run_id::text AS run_id, t.phase_id::text AS phase_id, t.project_name,
    t.project_path, t.status::text AS status, t.error, t.attempt, t.started_at, t.completed_at
"""
_STEP_COLUMNS = """
    s.id::text AS id, s.task_id::text AS task_id, s.run_id::text AS run_id, s.position, s.name,
    s.action, s.command, s.timeout_seconds, s.status::text AS status, s.exit_code, s.logs_s3_key,
    s.started_at, s.completed_at
"""


async def run_id_of_task(conn: Conn, task_id: str) -> str | None:
    row = await _one(conn, "SELECT run_id::text AS run_id FROM pipeline.tasks WHERE id = %s", (task_id,))
    return row["run_id"] if row else None


async def run_id_of_step(conn: Conn, step_id: str) -> str | None:
    row = await _one(conn, "SELECT run_id::text AS run_id FROM pipeline.steps WHERE id = %s", (step_id,))
    return row["run_id"] if row else None


async def get_task(conn: Conn, task_id: str) -> Row | None:
    return await _one(conn, f"SELECT {_TASK_COLUMNS} FROM pipeline.tasks t WHERE t.id = %s", (task_id,))


async def get_step(conn: Conn, step_id: str) -> Row | None:
    return await _one(conn, f"SELECT {_STEP_COLUMNS} FROM pipeline.steps s WHERE s.id = %s", (step_id,))


async def update_task(conn: Conn, task_id: str, status: str, error: str | None) -> Row:
    row = await _one(
        conn,
        f"""
        UPDATE pipeline.tasks AS t SET status = %(status)s::pipeline.task_status,
            error = coalesce(%(error)s, t.error),
            started_at = CASE WHEN %(status)s = 'running' THEN coalesce(t.started_at, now()) ELSE t.started_at END,
            completed_at = CASE WHEN %(status)s IN ('success', 'failed', 'cancelled') THEN now() ELSE t.completed_at END
        WHERE t.id = %(id)s
        RETURNING {_TASK_COLUMNS}
        """,
        {"id": task_id, "status": status, "error": error},
    )
    assert row is not None
    return row


async def update_step(conn: Conn, step_id: str, status: str, exit_code: int | None, logs_s3_key: str | None) -> Row:
    row = await _one(
        conn,
        f"""
        UPDATE pipeline.steps AS s SET status = %(status)s::pipeline.step_status,
            exit_code = coalesce(%(exit_code)s, s.exit_code),
            logs_s3_key = coalesce(%(logs)s, s.logs_s3_key),
            started_at = CASE WHEN %(status)s = 'running' THEN coalesce(s.started_at, now()) ELSE s.started_at END,
            completed_at = CASE WHEN %(status)s IN ('success', 'failed', 'cancelled') THEN now() ELSE s.completed_at END
        WHERE s.id = %(id)s
        RETURNING {_STEP_COLUMNS}
        """,
        {"id": step_id, "status": status, "exit_code": exit_code, "logs": logs_s3_key},
    )
    assert row is not None
    return row


async def set_step_details(conn: Conn, step_id: str, exit_code: int | None, logs_s3_key: str | None) -> Row:
    """A repeated report may still carry the exit code or log key the first one lacked."""
    row = await _one(
        conn,
        f"""
        UPDATE pipeline.steps AS s SET exit_code = coalesce(%s, s.exit_code), logs_s3_key = coalesce(%s, s.logs_s3_key)
        WHERE s.id = %s RETURNING {_STEP_COLUMNS}
        """,
        (exit_code, logs_s3_key, step_id),
    )
    assert row is not None
    return row


async def skip_pending_steps_of_task(conn: Conn, task_id: str) -> None:
    await conn.execute(
        "UPDATE pipeline.steps SET status = 'skipped' WHERE task_id = %s AND status = 'pending'", (task_id,)
    )


async def start_task_if_pending(conn: Conn, task_id: str) -> None:
    await conn.execute(
        "UPDATE pipeline.tasks SET status = 'running', started_at = coalesce(started_at, now())"
        " WHERE id = %s AND status = 'pending'",
        (task_id,),
    )


async def start_phase_if_pending(conn: Conn, phase_id: str) -> None:
    await conn.execute(
        "UPDATE pipeline.phases SET status = 'running', started_at = coalesce(started_at, now())"
        " WHERE id = %s AND status = 'pending'",
        (phase_id,),
    )


async def phase_of_task(conn: Conn, task_id: str) -> Row:
    row = await _one(
        conn,
        """
        SELECT p.id::text AS id, p.name, p.status::text AS status,
               array_agg(t2.status::text) AS task_statuses,
               array_agg(t2.error) FILTER (WHERE t2.status = 'failed') AS errors,
               array_agg(t2.project_name) FILTER (WHERE t2.status = 'failed') AS failed_projects
        FROM pipeline.tasks t JOIN pipeline.phases p ON p.id = t.phase_id
        JOIN pipeline.tasks t2 ON t2.phase_id = p.id
        WHERE t.id = %s GROUP BY p.id
        """,
        (task_id,),
    )
    assert row is not None
    return row


async def finish_phase(conn: Conn, phase_id: str, status: str) -> None:
    await conn.execute(
        """UPDATE pipeline.phases SET status = %s::pipeline.phase_status,
               started_at = coalesce(started_at, now()), completed_at = now()
           WHERE id = %s""",
        (status, phase_id),
    )


async def phase_statuses(conn: Conn, run_id: str) -> list[str]:
    rows = await _all(conn, "SELECT status::text AS status FROM pipeline.phases WHERE run_id = %s", (run_id,))
    return [r["status"] for r in rows]


# --- commit statuses ----------------------------------------------------------------------------


async def add_commit_status(
    conn: Conn, run_id: str, repository: str, commit_sha: str, state: str, description: str
) -> None:
    await conn.execute(
        """INSERT INTO pipeline.commit_statuses (run_id, repository, commit_sha, state, description)
           VALUES (%s, %s, %s, %s, %s)""",
        (run_id, repository, commit_sha, state, description),
    )


async def claim_commit_statuses(conn: Conn, limit: int, lease_seconds: float) -> list[Row]:
    """Due statuses, oldest first, at most one per run (a run's statuses go out in order); each
    claimed row is leased by pushing its next attempt into the future."""
    return await _all(
        conn,
        """
        WITH due AS (
            SELECT c.id FROM pipeline.commit_statuses c
            WHERE c.sent_at IS NULL AND NOT c.skipped AND c.next_attempt_at <= now()
              AND NOT EXISTS (SELECT 1 FROM pipeline.commit_statuses e
                              WHERE e.run_id = c.run_id AND e.id < c.id AND e.sent_at IS NULL AND NOT e.skipped)
            ORDER BY c.next_attempt_at, c.id LIMIT %s FOR UPDATE SKIP LOCKED
        )
        UPDATE pipeline.commit_statuses c SET next_attempt_at = now() + make_interval(secs => %s),
            attempts = c.attempts + 1
        FROM due WHERE c.id = due.id
        RETURNING c.id, c.run_id::text AS run_id, c.repository, c.commit_sha, c.state, c.description, c.attempts
        """,
        (limit, lease_seconds),
    )


async def commit_status_sent(conn: Conn, status_id: int) -> None:
    await conn.execute(
        "UPDATE pipeline.commit_statuses SET sent_at = now(), last_error = NULL WHERE id = %s", (status_id,)
    )


async def commit_status_retry(conn: Conn, status_id: int, delay_seconds: float, error: str) -> None:
    await conn.execute(
        "UPDATE pipeline.commit_statuses SET next_attempt_at = now() + make_interval(secs => %s), last_error = %s"
        " WHERE id = %s",
        (delay_seconds, error[:1000], status_id),
    )


async def commit_status_give_up(conn: Conn, status_id: int, error: str) -> None:
    await conn.execute(
        "UPDATE pipeline.commit_statuses SET skipped = true, last_error = %s WHERE id = %s", (error[:1000], status_id)
    )


async def skip_all_commit_statuses(conn: Conn) -> int:
    cur = await conn.execute(
        "UPDATE pipeline.commit_statuses SET skipped = true, last_error = 'no FORGE_GITHUB_TOKEN configured'"
        " WHERE sent_at IS NULL AND NOT skipped"
    )
    return cur.rowcount


# --- webhooks -----------------------------------------------------------------------------------


async def record_delivery(conn: Conn, delivery_id: str, event: str, outcome: str) -> bool:
    """False when this delivery was already processed (a GitHub redelivery)."""
    row = await _one(
        conn,
        """INSERT INTO pipeline.webhook_deliveries (delivery_id, event, outcome) VALUES (%s, %s, %s)
           ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id""",
        (delivery_id, event, outcome),
    )
    return row is not None


async def delivery(conn: Conn, delivery_id: str) -> Row | None:
    return await _one(
        conn,
        "SELECT delivery_id, event, outcome, run_id::text AS run_id FROM pipeline.webhook_deliveries WHERE delivery_id = %s",
        (delivery_id,),
    )


async def set_delivery_outcome(conn: Conn, delivery_id: str, outcome: str, run_id: str | None) -> None:
    await conn.execute(
        "UPDATE pipeline.webhook_deliveries SET outcome = %s, run_id = %s WHERE delivery_id = %s",
        (outcome, run_id, delivery_id),
    )


async def record_tag_push(
    conn: Conn, repository: str, tag: str, commit_sha: str, pushed_by: str, run_id: str | None
) -> None:
    await conn.execute(
        """INSERT INTO pipeline.tag_pushes (id, repository, tag, commit_sha, pushed_by, run_id)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (repository, tag, commit_sha) DO UPDATE SET run_id = coalesce(EXCLUDED.run_id, pipeline.tag_pushes.run_id)""",
        (uuid.uuid4(), repository, tag, commit_sha, pushed_by, run_id),
    )


# --- batched task report (service.report_task) --------------------------------------------------
# These send a statement and return its cursor without reading it, so that a caller inside
# ``conn.pipeline()`` can queue several and read them all after one round trip.


async def lock_run_of_task(conn: Conn, task_id: str) -> psycopg.AsyncCursor[DictRow]:
    """``lock_run`` for the run of a task (no row when the task does not exist)."""
    return await conn.execute(
        f"""UPDATE pipeline.runs AS r SET tree_version = r.tree_version + 1
            FROM pipeline.tasks t WHERE t.id = %s AND r.id = t.run_id RETURNING {_RUN_COLUMNS}""",
        (task_id,),
    )


async def task_with_phase_status(conn: Conn, task_id: str) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(
        f"""SELECT {_TASK_COLUMNS}, p.status::text AS phase_status
            FROM pipeline.tasks t JOIN pipeline.phases p ON p.id = t.phase_id WHERE t.id = %s""",
        (task_id,),
    )


async def steps_of_task(conn: Conn, task_id: str) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(f"SELECT {_STEP_COLUMNS} FROM pipeline.steps s WHERE s.task_id = %s", (task_id,))


async def send_update_step(
    conn: Conn, step_id: str, status: str, exit_code: int | None, logs_s3_key: str | None, *, started: bool = False
) -> psycopg.AsyncCursor[DictRow]:
    """``update_step``; ``started`` also records the start of a step that goes from pending
    straight to its outcome (``pending -> running -> outcome`` in one statement)."""
    return await conn.execute(
        f"""
        UPDATE pipeline.steps AS s SET status = %(status)s::pipeline.step_status,
            exit_code = coalesce(%(exit_code)s, s.exit_code),
            logs_s3_key = coalesce(%(logs)s, s.logs_s3_key),
            started_at = CASE WHEN %(status)s = 'running' OR %(started)s THEN coalesce(s.started_at, now())
                              ELSE s.started_at END,
            completed_at = CASE WHEN %(status)s IN ('success', 'failed', 'cancelled') THEN now() ELSE s.completed_at END
        WHERE s.id = %(id)s
        RETURNING {_STEP_COLUMNS}
        """,
        {"id": step_id, "status": status, "exit_code": exit_code, "logs": logs_s3_key, "started": started},
    )


async def send_step_details(
    conn: Conn, step_id: str, exit_code: int | None, logs_s3_key: str | None
) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(
        f"""
        UPDATE pipeline.steps AS s SET exit_code = coalesce(%s, s.exit_code), logs_s3_key = coalesce(%s, s.logs_s3_key)
        WHERE s.id = %s RETURNING {_STEP_COLUMNS}
        """,
        (exit_code, logs_s3_key, step_id),
    )


async def send_get_step(conn: Conn, step_id: str) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(f"SELECT {_STEP_COLUMNS} FROM pipeline.steps s WHERE s.id = %s", (step_id,))


async def send_get_task(conn: Conn, task_id: str) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(f"SELECT {_TASK_COLUMNS} FROM pipeline.tasks t WHERE t.id = %s", (task_id,))


async def send_update_task(conn: Conn, task_id: str, status: str, error: str | None) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(
        f"""
        UPDATE pipeline.tasks AS t SET status = %(status)s::pipeline.task_status,
            error = coalesce(%(error)s, t.error),
            started_at = CASE WHEN %(status)s = 'running' THEN coalesce(t.started_at, now()) ELSE t.started_at END,
            completed_at = CASE WHEN %(status)s IN ('success', 'failed', 'cancelled') THEN now() ELSE t.completed_at END
        WHERE t.id = %(id)s
        RETURNING {_TASK_COLUMNS}
        """,
        {"id": task_id, "status": status, "error": error},
    )


async def send_phase_of_task(conn: Conn, task_id: str) -> psycopg.AsyncCursor[DictRow]:
    return await conn.execute(
        """
        SELECT p.id::text AS id, p.name, p.status::text AS status, array_agg(t2.status::text) AS task_statuses
        FROM pipeline.tasks t JOIN pipeline.phases p ON p.id = t.phase_id
        JOIN pipeline.tasks t2 ON t2.phase_id = p.id
        WHERE t.id = %s GROUP BY p.id
        """,
        (task_id,),
    )
