"""SQL of the pipeline schema, and the unit of work that owns its transactions.

Every function takes the caller's connection and reads typed rows (``records.py``, built by
psycopg's ``kwargs_row``); the transaction belongs to ``UnitOfWork.begin()`` (HTTP use cases)
or to the dispatcher's own ``conn.transaction()`` (the same use cases, run by the orchestrator).
Events go into the outbox with ``record`` in that same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Literal, NamedTuple, TypeVar, cast

import msgspec
import psycopg
from psycopg.rows import DictRow, kwargs_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from forge_common import github
from forge_common.events import EventData
from forge_common.jobs import PlannedArtifact
from forge_common.outbox import add_event
from forge_common.tracing import inject

from .domain import ACTIVE_RUN_STATUSES, ListQuery, PhasePlan, ReportWrites, Snapshot, StepPlan, StepWrite, TaskPlan
from .records import Delivery, PhaseTally, Run, RunSummary, Step, Task, TaskInPhase, WorkStatus

__all__ = ["SCHEMA", "Conn", "UnitOfWork", "record"]

SCHEMA = "pipeline"
Conn = psycopg.AsyncConnection[DictRow]
Params = Sequence[object] | Mapping[str, object]
R = TypeVar("R")

_RUN_COLUMNS = """
    r.id::text AS id, r.repository, r.branch, r.commit_sha, r.tag, r.triggered_by, r.triggered_by_id,
    r.trigger_type::text AS trigger_type, r.status::text AS status, r.error, r.failed_phase, r.release_error,
    r.request_fingerprint, r.started_at, r.completed_at, r.discovered_at, r.tree_version
"""


class UnitOfWork:
    """Opens the transactions of the HTTP use cases: state, outbox events and commit statuses
    of one use case commit together or not at all."""

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Conn]:
        """Commits when the block ends normally, rolls back when it raises."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn


async def record(conn: Conn, event: EventData) -> None:
    """Write ``event`` to the outbox in the caller's transaction (the relay publishes it after commit)."""
    await add_event(conn, SCHEMA, event)


async def _send(conn: Conn, record_type: type[R], sql: str, params: Params = ()) -> psycopg.AsyncCursor[R]:
    """Send one statement whose rows are ``record_type``; read them from the returned cursor
    (inside ``conn.pipeline()`` several go out in one round trip)."""
    cur = conn.cursor(row_factory=kwargs_row(record_type))
    await cur.execute(sql, params)
    return cur


async def _one(conn: Conn, record_type: type[R], sql: str, params: Params = ()) -> R | None:
    return await (await _send(conn, record_type, sql, params)).fetchone()


async def _all(conn: Conn, record_type: type[R], sql: str, params: Params = ()) -> list[R]:
    return await (await _send(conn, record_type, sql, params)).fetchall()


async def _scalar(conn: Conn, sql: str, params: Params = ()) -> object:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(sql, params)
    row = await cur.fetchone()
    return row[0] if row is not None else None


# --- runs ---------------------------------------------------------------------------------------


async def lock_repository(conn: Conn, repository: str) -> None:
    """Serialise run creation per repository (case-insensitively) until the transaction ends
    (the active-run limit, one run per commit)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"forge.pipeline.runs:{repository.lower()}",)
    )


# The run of a commit, whichever of the two SHAs is abbreviated: a stored SHA that is the given
# one or a prefix of it (a run not yet discovered), or one that extends it (over the "C"-collated
# SHAs). Repository names compare case-insensitively. Every such SHA lies between the given
# one's 7-character prefix and the given one followed by "g": that range is the index condition
# on runs_repository_commit_key (a few rows), which holds in a generic plan too (psycopg
# prepares a statement run often, and a plan made while the table was small stays); the exact
# test filters the range. The matches are found first, then ordered: with a plain ORDER BY ...
# LIMIT 1 the planner walked the repository's runs by creation time and filtered every one
# (8.6 ms and 20,000 buffers in a repository of 20,000 runs, against 0.07 ms), so POSTs slowed
# down, under the repository's creation lock, as its history grew (issue 11).
_SQL_RUN_OF_COMMIT = f"""
WITH matches AS MATERIALIZED (
    SELECT r.id FROM pipeline.runs r
    WHERE r.repository_key = lower(%(repository)s)
      AND r.commit_sha >= %(lowest)s AND r.commit_sha < %(sha)s || 'g'
      AND (r.commit_sha = ANY(%(prefixes)s) OR r.commit_sha >= %(sha)s)
)
SELECT {_RUN_COLUMNS} FROM pipeline.runs r JOIN matches m ON m.id = r.id
ORDER BY r.created_at LIMIT 1
"""


def _commit_params(repository: str, commit_sha: str) -> dict[str, object]:
    prefixes = [commit_sha[:n] for n in range(7, len(commit_sha) + 1)]
    return {"repository": repository, "sha": commit_sha, "prefixes": prefixes, "lowest": prefixes[0]}


async def creation_checks(
    conn: Conn, repository: str, commit_sha: str, triggered_by: str, idempotency_key: str | None
) -> tuple[Run | None, Run | None, int, str]:
    """Take the repository's creation lock, then read (run with this Idempotency-Key, run for
    this commit, active runs of the repository, the repository's name as first given): five
    statements in one round trip. The server runs them in order, and each read takes its
    snapshot after the lock is granted."""
    async with conn.pipeline():
        await lock_repository(conn, repository)
        by_key = None
        if idempotency_key is not None:
            by_key = await _send(
                conn,
                Run,
                f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.triggered_by = %s AND r.idempotency_key = %s",
                (triggered_by, idempotency_key),
            )
        by_commit = await _send(conn, Run, _SQL_RUN_OF_COMMIT, _commit_params(repository, commit_sha))
        active = conn.cursor(row_factory=tuple_row)
        await active.execute(
            "SELECT count(*) FROM pipeline.runs WHERE repository_key = lower(%s) AND status IN ('pending', 'running')",
            (repository,),
        )
        spelling = conn.cursor(row_factory=tuple_row)
        await spelling.execute(
            "SELECT repository FROM pipeline.runs WHERE repository_key = lower(%s) ORDER BY created_at, id LIMIT 1",
            (repository,),
        )
    key_row = await by_key.fetchone() if by_key is not None else None
    commit_row = await by_commit.fetchone()
    count_row = await active.fetchone()
    first = await spelling.fetchone()
    return key_row, commit_row, int(count_row[0]) if count_row else 0, str(first[0]) if first else repository


async def run_by_commit(conn: Conn, repository: str, commit_sha: str) -> Run | None:
    return await _one(conn, Run, _SQL_RUN_OF_COMMIT, _commit_params(repository, commit_sha))


async def set_full_commit(conn: Conn, run_id: str, full_sha: str) -> str | None:
    """Store the full SHA discovery resolved. Returns the id of another run of the repository
    that already builds that commit (then nothing changed), else None."""
    other = await _scalar(
        conn,
        """SELECT o.id::text FROM pipeline.runs r JOIN pipeline.runs o
               ON o.repository_key = r.repository_key AND o.commit_sha = %s AND o.id <> r.id
           WHERE r.id = %s""",
        (full_sha, run_id),
    )
    if isinstance(other, str):
        return other
    await conn.execute(
        "UPDATE pipeline.runs SET commit_sha = %s, updated_at = now() WHERE id = %s AND commit_sha <> %s",
        (full_sha, run_id, full_sha),
    )
    return None


async def set_release_error(conn: Conn, run_id: str, error: str | None) -> None:
    """Record (or, with None, clear) why the run's release could not be made; bumps the tree
    version so GET /v1/runs/{id} shows it at once."""
    await conn.execute(
        "UPDATE pipeline.runs SET release_error = %s, tree_version = tree_version + 1, updated_at = now()"
        " WHERE id = %s",
        (error[:4000] if error is not None else None, run_id),
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
    triggered_by_id: str | None = None,
    tag: str | None = None,
    pull_request_number: int | None = None,
    idempotency_key: str | None = None,
    request_fingerprint: str | None = None,
) -> psycopg.AsyncCursor[Run]:
    """Send the insert; the stored row is read from the returned cursor (so that the caller can
    pipeline the insert with the event and the commit status). The current trace context is
    stored with the run: the dispatcher continues that trace."""
    return await _send(
        conn,
        Run,
        f"""
        INSERT INTO pipeline.runs AS r (id, repository, branch, commit_sha, tag, pull_request_number,
            triggered_by, trigger_type, idempotency_key, request_fingerprint, triggered_by_id, trace_context)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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
            triggered_by_id,
            Jsonb(dict(inject({}))),
        ),
    )


async def lock_run(conn: Conn, run_id: str) -> Run | None:
    """The run row, locked, with its ``tree_version`` bumped.

    Every change to a run or its tree takes this first: concurrent reports of one run
    serialise, roll-ups see a consistent tree, and the version tells ``GET /v1/runs/{id}``
    that its cached body is stale. Code that changes phases/tasks/steps without calling this
    would leave stale trees in that cache.
    """
    return await _one(
        conn,
        Run,
        f"UPDATE pipeline.runs AS r SET tree_version = r.tree_version + 1 WHERE r.id = %s RETURNING {_RUN_COLUMNS}",
        (run_id,),
    )


async def tree_version(conn: Conn, run_id: str) -> int | None:
    version = await _scalar(conn, "SELECT tree_version FROM pipeline.runs WHERE id = %s", (run_id,))
    return int(version) if isinstance(version, int) else None


async def get_run(conn: Conn, run_id: str) -> Run | None:
    """The run row, unlocked (a dry run's look at what a cancellation would find)."""
    return await _one(conn, Run, f"SELECT {_RUN_COLUMNS} FROM pipeline.runs AS r WHERE r.id = %s", (run_id,))


async def active_run_ids(conn: Conn, repository: str, branch: str | None, status: str | None, limit: int) -> list[str]:
    """Ids of a repository's pending/running runs (optionally of one branch or one of the two
    statuses), oldest first; at most ``limit``. A scan of ``runs_active_repository_idx``."""
    statuses = [status] if status is not None else list(ACTIVE_RUN_STATUSES)
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT id::text FROM pipeline.runs WHERE repository = %s AND status IN ('pending', 'running') "
        "AND status::text = ANY(%s) AND (%s::text IS NULL OR branch = %s) ORDER BY created_at, id LIMIT %s",
        (repository, statuses, branch, branch, limit),
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def set_run_running(conn: Conn, run_id: str) -> None:
    await conn.execute(
        "UPDATE pipeline.runs SET status = 'running', updated_at = now() WHERE id = %s AND status = 'pending'",
        (run_id,),
    )


async def finish_run(
    conn: Conn, run_id: str, status: str, error: str | None = None, failed_phase: str | None = None
) -> Run:
    row = await _one(
        conn,
        Run,
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


async def plan_tag_publications(conn: Conn, run_id: str, retry_tag: str | None = None) -> int:
    """For a successful run: one ``pending`` publication per built artifact that declares
    ``github-release`` and per tag pushed onto the run's commit (``pipeline.tag_pushes``) that it
    was not published to yet; the number added. Idempotent (a redelivered tag push adds none);
    a run not (yet) successful gets none: the dispatcher plans again when it succeeds.

    ``retry_tag``: a new push of that tag, whose failed publications are tried again (the
    successful ones never are)."""
    if retry_tag is not None:
        await conn.execute(
            """UPDATE pipeline.artifact_publications SET status = 'pending', error = NULL, completed_at = NULL
               WHERE run_id = %s AND tag = %s AND status = 'failed'""",
            (run_id, retry_tag),
        )
    cur = await conn.execute(
        """
        INSERT INTO pipeline.artifact_publications (id, run_id, artifact_id, tag)
        SELECT gen_random_uuid(), a.run_id, a.id, t.tag
        FROM pipeline.artifacts a
        JOIN pipeline.runs r ON r.id = a.run_id AND r.status = 'success'
        JOIN pipeline.steps s ON s.id = a.id AND s.status = 'success'
        JOIN pipeline.tag_pushes t ON t.run_id = a.run_id
        WHERE a.run_id = %s AND a.publish ? 'github-release' AND a.digest IS NOT NULL
          AND a.tracking_oci_uri IS NOT NULL
        ORDER BY a.project, a.name, t.created_at
        ON CONFLICT (artifact_id, destination, tag) DO NOTHING
        RETURNING id
        """,
        (run_id,),
    )
    return len(await cur.fetchall())


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


async def list_runs(conn: Conn, query: ListQuery) -> tuple[list[RunSummary], int]:
    """One page, newest first, and the count of every run matching the filters. Each filter
    combination is a range scan of a ``(repository[, branch | status | triggered_by],
    created_at, id)`` index; a cursor continues below the last row seen (keyset), one more row
    than the page is read to tell whether there is a next page."""
    where = ["repository_key = lower(%(repository)s)"]
    if query.branch is not None:
        where.append("branch = %(branch)s")
    if query.status is not None:
        where.append("status = %(status)s::pipeline.run_status")
    if query.triggered_by is not None:
        where.append("triggered_by = %(triggered_by)s")
    if query.created_after is not None:
        where.append("created_at > %(created_after)s")
    if query.created_before is not None:
        where.append("created_at < %(created_before)s")
    cond = " AND ".join(where)
    params: dict[str, object] = {
        "repository": query.repository,
        "branch": query.branch,
        "status": query.status,
        "triggered_by": query.triggered_by,
        "created_after": query.created_after,
        "created_before": query.created_before,
        "limit": query.limit + 1,
        "offset": query.offset,
    }
    page_cond = cond
    if query.after is not None:
        page_cond += " AND (created_at, id) < (%(after_at)s, %(after_id)s::uuid)"
        params["after_at"], params["after_id"] = query.after
    rows = await _all(
        conn,
        RunSummary,
        f"""
        SELECT id::text AS id, repository, commit_sha, status::text AS status, started_at, created_at
        FROM pipeline.runs WHERE {page_cond}
        ORDER BY created_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s
        """,
        params,
    )
    if (
        query.branch is None
        and query.triggered_by is None
        and query.created_after is None
        and query.created_before is None
    ):
        # Kept by triggers (migrations 0011, 0061; keyed by the lower-cased name): no count over
        # a repository's every run.
        status_cond = " AND status = %(status)s::pipeline.run_status" if query.status is not None else ""
        total = await _scalar(
            conn,
            f"SELECT coalesce(sum(runs), 0)::bigint FROM pipeline.run_counts WHERE repository = lower(%(repository)s){status_cond}",
            params,
        )
    else:
        total = await _scalar(conn, f"SELECT count(*) FROM pipeline.runs WHERE {cond}", params)
    return rows, int(total) if isinstance(total, int) else 0


# --- the tree -----------------------------------------------------------------------------------

_TREE_PHASES = """
SELECT p.id::text, p.name, p.group_number, p.status::text, p.started_at, p.completed_at
FROM pipeline.phases p WHERE p.run_id = %s ORDER BY p.group_number, p.name
"""
_TREE_TASKS = """
SELECT t.id::text, t.phase_id::text, t.project_name, t.status::text, t.started_at, t.completed_at
FROM pipeline.tasks t WHERE t.run_id = %s ORDER BY t.project_name
"""
# Unordered: sorting 1,000 rows by (task, position) costs Postgres more than Python.
_TREE_STEPS = """
SELECT s.task_id::text, s.position, s.id::text, s.name, s.status::text, s.exit_code, s.logs_s3_key,
       s.started_at, s.completed_at
FROM pipeline.steps s WHERE s.run_id = %s
"""


# An artifact's status is its step's.
_TREE_ARTIFACTS = """
SELECT a.name, a.project, a.artifact_type, s.status::text, a.digest, a.size, a.tracking_oci_uri,
       a.published_uris, a.error
FROM pipeline.artifacts a JOIN pipeline.steps s ON s.id = a.id
WHERE a.run_id = %s ORDER BY a.project, a.name
"""


# The tree's rows stay plain tuples (no per-row object) for the thousand-step case.
PhaseTuple = tuple[str, str, int, str, dt.datetime | None, dt.datetime | None]
TaskTuple = tuple[str, str, str, str, dt.datetime | None, dt.datetime | None]
StepTuple = tuple[str, int, str, str, str, int | None, str | None, dt.datetime | None, dt.datetime | None]
ArtifactTuple = tuple[str, str, str, str, str | None, int | None, str | None, list[str], str | None]


class TreeRows(NamedTuple):
    run: Run | None
    phases: list[PhaseTuple]
    tasks: list[TaskTuple]
    steps: list[StepTuple]
    artifacts: list[ArtifactTuple]


async def tree_rows(conn: Conn, run_id: str) -> TreeRows:
    """The run and its phases, tasks, steps and artifacts: five queries sent in one round trip,
    whatever the size of the tree; plain tuples (no per-row dict) for the thousand-step case."""
    async with conn.pipeline():
        run_cur = await _send(conn, Run, f"SELECT {_RUN_COLUMNS} FROM pipeline.runs r WHERE r.id = %s", (run_id,))
        cursors = []
        for sql in (_TREE_PHASES, _TREE_TASKS, _TREE_STEPS, _TREE_ARTIFACTS):
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(sql, (run_id,))
            cursors.append(cur)
    run = await run_cur.fetchone()
    phases, tasks, steps, artifacts = [await c.fetchall() for c in cursors]
    return TreeRows(
        run,
        cast(list[PhaseTuple], phases),
        cast(list[TaskTuple], tasks),
        cast(list[StepTuple], steps),
        cast(list[ArtifactTuple], artifacts),
    )


# --- discovery ----------------------------------------------------------------------------------


async def mark_discovered(conn: Conn, run_id: str, release_triggers: object) -> None:
    await conn.execute(
        "UPDATE pipeline.runs SET discovered_at = now(), release_triggers = %s, updated_at = now() WHERE id = %s",
        (Jsonb(release_triggers) if release_triggers is not None else None, run_id),
    )


async def has_phases(conn: Conn, run_id: str) -> bool:
    return await _scalar(conn, "SELECT 1 FROM pipeline.phases WHERE run_id = %s LIMIT 1", (run_id,)) is not None


async def _copy(conn: Conn, table: str, columns: str, rows: list[tuple[object, ...]]) -> None:
    # COPY: a 1,000-step tree is stored in a few milliseconds instead of 1,000 INSERTs.
    async with conn.cursor() as cur, cur.copy(f"COPY pipeline.{table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)


# A small tree in one statement and one round trip (arrays); a one-step run used to pay three
# COPYs, a round trip each (issue 11). From this many rows on, COPY is faster (a 1,000-step
# tree: 51 ms against 57 ms in one statement, docs/performance.md).
_COPY_FROM_ROWS = 200
_INSERT_PLAN = """
WITH new_phases AS (
    INSERT INTO pipeline.phases (id, run_id, name, group_number, timeout_seconds)
    SELECT u.id, %(run_id)s::uuid, u.name, u.group_number, u.timeout_seconds
    FROM unnest(%(phase_id)s::uuid[], %(phase_name)s::text[], %(phase_group)s::int[], %(phase_timeout)s::int[])
        AS u(id, name, group_number, timeout_seconds)
), new_tasks AS (
    INSERT INTO pipeline.tasks (id, run_id, phase_id, project_name, project_path)
    SELECT u.id, %(run_id)s::uuid, u.phase_id, u.project_name, u.project_path
    FROM unnest(%(task_id)s::uuid[], %(task_phase)s::uuid[], %(task_project)s::text[], %(task_path)s::text[])
        AS u(id, phase_id, project_name, project_path)
)
INSERT INTO pipeline.steps
    (id, task_id, run_id, position, name, action, command, timeout_seconds, memory_bytes, processes, network, env)
SELECT u.id, u.task_id, %(run_id)s::uuid, u.position, u.name, u.action, u.command, u.timeout_seconds,
       u.memory_bytes, u.processes, u.network, u.env
FROM unnest(%(step_id)s::uuid[], %(step_task)s::uuid[], %(step_position)s::int[], %(step_name)s::text[],
            %(step_action)s::text[], %(step_command)s::text[], %(step_timeout)s::int[], %(step_memory)s::bigint[],
            %(step_processes)s::int[], %(step_network)s::boolean[], %(step_env)s::jsonb[])
    AS u(id, task_id, position, name, action, command, timeout_seconds, memory_bytes, processes, network, env)
"""
# The rows' columns as _INSERT_PLAN's parameters (None: the run id, one parameter for all).
_PLAN_PHASE = ("phase_id", None, "phase_name", "phase_group", "phase_timeout")
_PLAN_TASK = ("task_id", None, "task_phase", "task_project", "task_path")
_PLAN_STEP = (
    "step_id",
    "step_task",
    None,
    "step_position",
    "step_name",
    "step_action",
    "step_command",
    "step_timeout",
    "step_memory",
    "step_processes",
    "step_network",
    "step_env",
)


async def insert_plan(conn: Conn, run_id: str, phases: list[PhasePlan]) -> None:
    """Store a discovered tree; every phase, task and step of ``phases`` gets its id here."""
    phase_rows: list[tuple[object, ...]] = []
    task_rows: list[tuple[object, ...]] = []
    step_rows: list[tuple[object, ...]] = []
    for phase in phases:
        phase.id = phase.id or str(uuid.uuid4())
        phase_rows.append((phase.id, run_id, phase.name, phase.group_number, phase.timeout_seconds))
        for task in phase.tasks:
            task.id = task.id or str(uuid.uuid4())
            task_rows.append((task.id, run_id, phase.id, task.project_name, task.project_path))
            for position, step in enumerate(task.steps):
                step.id = step.id or str(uuid.uuid4())
                step.position = position
                step_rows.append(
                    (
                        step.id,
                        task.id,
                        run_id,
                        position,
                        step.name,
                        step.action,
                        step.command,
                        step.timeout_seconds,
                        step.memory_bytes,
                        step.processes,
                        step.network,
                        Jsonb(step.env),
                    )
                )
    if not phase_rows:
        return
    if len(phase_rows) + len(task_rows) + len(step_rows) < _COPY_FROM_ROWS:
        params: dict[str, object] = {"run_id": run_id}
        for names, rows in ((_PLAN_PHASE, phase_rows), (_PLAN_TASK, task_rows), (_PLAN_STEP, step_rows)):
            columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
            params.update({name: list(values) for name, values in zip(names, columns, strict=True) if name})
        await conn.execute(_INSERT_PLAN, params)
        return
    await _copy(conn, "phases", "id, run_id, name, group_number, timeout_seconds", phase_rows)
    if task_rows:
        await _copy(conn, "tasks", "id, run_id, phase_id, project_name, project_path", task_rows)
    if step_rows:
        await _copy(
            conn,
            "steps",
            "id, task_id, run_id, position, name, action, command, timeout_seconds, memory_bytes, processes, network, env",
            step_rows,
        )


async def insert_artifacts(conn: Conn, run_id: str, phase: PhasePlan, artifacts: list[PlannedArtifact]) -> None:
    """The declarations behind the ``artifacts`` phase (inserted by ``insert_plan`` just
    before, so its steps have ids): one row per artifact, keyed by its step's id."""
    step_ids = {(t.project_name, s.name): (t.id, s.id) for t in phase.tasks for s in t.steps}
    rows: list[tuple[object, ...]] = []
    for a in artifacts:
        task_id, step_id = step_ids[(a.project, a.name)]
        rows.append(
            (
                step_id,
                run_id,
                task_id,
                a.project,
                a.project_path,
                a.name,
                a.type,
                a.build,
                a.path,
                Jsonb(a.publish),
                a.timeout_seconds,
            )
        )
    if rows:
        await _copy(
            conn,
            "artifacts",
            "id, run_id, task_id, project, project_path, name, artifact_type, build, path, publish, timeout_seconds",
            rows,
        )


class _PlanRow(msgspec.Struct):
    phase_id: str
    phase_name: str
    group_number: int
    phase_timeout: int | None
    phase_status: str
    task_id: str | None
    project_name: str | None
    project_path: str | None
    task_status: str | None
    step_id: str | None
    step_name: str | None
    action: Literal["shell", "earthly"] | None
    command: str | None
    step_timeout: int | None
    memory_bytes: int | None
    processes: int | None
    network: bool | None
    env: dict[str, str] | None
    position: int | None
    step_status: str | None


_SQL_PLAN = """
SELECT p.id::text AS phase_id, p.name AS phase_name, p.group_number, p.timeout_seconds AS phase_timeout,
       p.status::text AS phase_status,
       t.id::text AS task_id, t.project_name, t.project_path, t.status::text AS task_status,
       s.id::text AS step_id, s.name AS step_name, s.action, s.command, s.timeout_seconds AS step_timeout,
       s.memory_bytes, s.processes, s.network, s.env, s.position, s.status::text AS step_status
FROM pipeline.phases p
LEFT JOIN pipeline.tasks t ON t.phase_id = p.id
LEFT JOIN pipeline.steps s ON s.task_id = t.id
WHERE p.run_id = %s
ORDER BY p.group_number, p.name, t.project_name, s.position
"""


async def load_plan(conn: Conn, run_id: str) -> list[PhasePlan]:
    """The stored tree of a run with ids and current statuses (for an orchestrator resuming a run)."""
    phases: dict[str, PhasePlan] = {}
    tasks: dict[str, TaskPlan] = {}
    for r in await _all(conn, _PlanRow, _SQL_PLAN, (run_id,)):
        phase = phases.get(r.phase_id)
        if phase is None:
            phase = phases[r.phase_id] = PhasePlan(
                id=r.phase_id,
                name=r.phase_name,
                group_number=r.group_number,
                timeout_seconds=r.phase_timeout,
                status=r.phase_status,
            )
        if r.task_id is None or r.project_name is None:
            continue
        task = tasks.get(r.task_id)
        if task is None:
            task = tasks[r.task_id] = TaskPlan(
                id=r.task_id,
                project_name=r.project_name,
                project_path=r.project_path or ".",
                status=r.task_status or "",
            )
            phase.tasks.append(task)
        if r.step_id is not None and r.step_name is not None:
            task.steps.append(
                StepPlan(
                    id=r.step_id,
                    name=r.step_name,
                    action=r.action or "shell",
                    command=r.command or "",
                    timeout_seconds=r.step_timeout,
                    memory_bytes=r.memory_bytes,
                    processes=r.processes,
                    network=r.network is not False,
                    env=r.env or {},
                    position=r.position or 0,
                    status=r.step_status or "",
                )
            )
    return list(phases.values())


# --- tasks and steps ----------------------------------------------------------------------------

_TASK_COLUMNS = """
    t.id::text AS id, t.run_id::text AS run_id, t.phase_id::text AS phase_id, t.project_name,
    t.status::text AS status, t.error, t.started_at, t.completed_at
"""
_STEP_COLUMNS = """
    s.id::text AS id, s.task_id::text AS task_id, s.run_id::text AS run_id, s.status::text AS status,
    s.exit_code, s.logs_s3_key, s.started_at, s.completed_at
"""


async def task_of_step(conn: Conn, step_id: str) -> str | None:
    task_id = await _scalar(conn, "SELECT task_id::text FROM pipeline.steps WHERE id = %s", (step_id,))
    return task_id if isinstance(task_id, str) else None


async def finish_phase(conn: Conn, phase_id: str, status: str) -> tuple[str, float]:
    """Finish a phase; returns its name and how long it ran (seconds). A phase runs from its
    earliest task start to its latest task end (the workers' times, see ``_SQL_UPDATE_STEP``);
    a phase without a task that ran starts and ends now."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        """UPDATE pipeline.phases AS p SET status = %(status)s::pipeline.phase_status,
               started_at = coalesce(least(p.started_at, w.first), now()),
               completed_at = greatest(coalesce(least(p.started_at, w.first), now()), coalesce(w.last, now()))
           FROM (SELECT min(started_at) AS first, max(completed_at) AS last
                 FROM pipeline.tasks WHERE phase_id = %(id)s) AS w
           WHERE p.id = %(id)s
           RETURNING p.name, extract(epoch FROM p.completed_at - p.started_at)::float8""",
        {"status": status, "id": phase_id},
    )
    row = await cur.fetchone()
    return (str(row[0]), float(row[1])) if row is not None else ("", 0.0)


async def phase_statuses(conn: Conn, run_id: str) -> list[str]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute("SELECT status::text FROM pipeline.phases WHERE run_id = %s", (run_id,))
    return [str(status) for (status,) in await cur.fetchall()]


# --- a report of a task, in two round trips (service.report) ----------------------------------
# Round trip 1 locks the run and reads the task, its phase's status and its steps' statuses
# (the server runs them in order, so each read starts after the lock is granted); the domain
# decides; round trip 2 sends every write and the reads the answer and the roll-up need.

_SQL_LOCK_RUN_OF_TASK = f"""
UPDATE pipeline.runs AS r SET tree_version = r.tree_version + 1
FROM pipeline.tasks t WHERE t.id = %s AND r.id = t.run_id RETURNING {_RUN_COLUMNS}
"""
_SQL_TASK_IN_PHASE = f"""
SELECT {_TASK_COLUMNS}, p.status::text AS phase_status, t.dispatched_at
FROM pipeline.tasks t JOIN pipeline.phases p ON p.id = t.phase_id WHERE t.id = %s
"""
_SQL_STEPS_OF_TASK = "SELECT s.id::text, s.status::text FROM pipeline.steps s WHERE s.task_id = %s"

# Times reported by a worker are its clock's, trusted within a bound: never before the task's
# first dispatch (``floor``), never after the report arrived (``now()``, the transaction's
# start); a time not reported is the report's arrival. ``{ts}`` names the parameter.
_WORKER_TIME = "least(now(), greatest(%(floor)s::timestamptz, coalesce(%({ts})s::timestamptz, now())))"
_STARTED = _WORKER_TIME.format(ts="started_at")
_COMPLETED = _WORKER_TIME.format(ts="completed_at")

# ``started``: a step going from pending straight to its outcome also gets its start time. Its
# end is never before its start.
_SQL_UPDATE_STEP = f"""
UPDATE pipeline.steps AS s SET status = %(status)s::pipeline.step_status,
    exit_code = coalesce(%(exit_code)s, s.exit_code),
    logs_s3_key = coalesce(%(logs)s, s.logs_s3_key),
    started_at = CASE WHEN %(status)s = 'running' OR %(started)s THEN coalesce(s.started_at, {_STARTED})
                      ELSE s.started_at END,
    completed_at = CASE WHEN %(status)s IN ('success', 'failed', 'cancelled')
                        THEN greatest({_COMPLETED}, coalesce(s.started_at, {_STARTED})) ELSE s.completed_at END
WHERE s.id = %(id)s
RETURNING {_STEP_COLUMNS}
"""
_SQL_STEP_DETAILS = f"""
UPDATE pipeline.steps AS s SET exit_code = coalesce(%(exit_code)s, s.exit_code),
    logs_s3_key = coalesce(%(logs)s, s.logs_s3_key)
WHERE s.id = %(id)s RETURNING {_STEP_COLUMNS}
"""
_SQL_GET_STEP = f"SELECT {_STEP_COLUMNS} FROM pipeline.steps s WHERE s.id = %(id)s"
# A task runs from its first step's start to its last step's end (the checkout before its
# first step is not counted); a phase's start is corrected to its earliest task's when it ends.
_SQL_START_TASK = f"""
UPDATE pipeline.tasks SET status = 'running', started_at = coalesce(started_at, {_STARTED})
WHERE id = %(id)s AND status = 'pending'
"""
_SQL_START_PHASE = f"""
UPDATE pipeline.phases SET status = 'running', started_at = coalesce(started_at, {_STARTED})
WHERE id = %(phase_id)s AND status = 'pending'
"""
_SQL_UPDATE_TASK = f"""
UPDATE pipeline.tasks AS t SET status = %(status)s::pipeline.task_status,
    error = coalesce(%(error)s, t.error),
    started_at = CASE WHEN %(status)s = 'running' THEN coalesce(t.started_at, {_STARTED}) ELSE t.started_at END,
    completed_at = CASE WHEN %(status)s IN ('success', 'failed', 'cancelled')
                        THEN greatest({_COMPLETED}, coalesce(t.started_at, {_STARTED})) ELSE t.completed_at END
WHERE t.id = %(id)s
RETURNING {_TASK_COLUMNS}
"""
_SQL_GET_TASK = f"SELECT {_TASK_COLUMNS} FROM pipeline.tasks t WHERE t.id = %(id)s"
_SQL_SKIP_PENDING_STEPS = "UPDATE pipeline.steps SET status = 'skipped' WHERE task_id = %s AND status = 'pending'"
_SQL_PHASE_TALLY = """
SELECT p.id::text AS id, p.name, p.status::text AS status, array_agg(t2.status::text) AS task_statuses
FROM pipeline.tasks t JOIN pipeline.phases p ON p.id = t.phase_id
JOIN pipeline.tasks t2 ON t2.phase_id = p.id
WHERE t.id = %s GROUP BY p.id
"""


async def read_for_report(conn: Conn, task_id: str) -> Snapshot | None:
    """Lock the task's run and read what a report is decided on; ``None`` when no such task."""
    async with conn.pipeline():
        run_cur = await _send(conn, Run, _SQL_LOCK_RUN_OF_TASK, (task_id,))
        task_cur = await _send(conn, TaskInPhase, _SQL_TASK_IN_PHASE, (task_id,))
        steps_cur = conn.cursor(row_factory=tuple_row)
        await steps_cur.execute(_SQL_STEPS_OF_TASK, (task_id,))
    run = await run_cur.fetchone()
    task = await task_cur.fetchone()
    steps: dict[str, WorkStatus] = dict(await steps_cur.fetchall())
    if run is None or task is None:
        return None
    return Snapshot(run=run, task=task, steps=steps)


async def write_report(
    conn: Conn, snapshot: Snapshot, writes: ReportWrites, error: str | None
) -> tuple[Task | None, list[Step], PhaseTally | None]:
    """Send what ``domain.apply_report`` decided in one round trip. Returns the task (when the
    report had a task status), the reported steps in order, and the task's phase when the task
    finished (read after the writes, for the roll-up)."""
    task_id = snapshot.task.id
    floor = snapshot.task.dispatched_at
    times = {"floor": floor, "started_at": writes.started_at, "completed_at": writes.completed_at}
    async with conn.pipeline():
        step_curs = [await _send_step_write(conn, write, floor) for write in writes.steps]
        if writes.start_task:
            await conn.execute(_SQL_START_TASK, {"id": task_id, **times})
        if writes.start_phase:
            await conn.execute(_SQL_START_PHASE, {"phase_id": snapshot.task.phase_id, **times})
        if writes.start_run:
            await set_run_running(conn, snapshot.run.id)
        task_cur = None
        if writes.task == "update":
            params = {"id": task_id, "status": writes.task_status, "error": error, **times}
            task_cur = await _send(conn, Task, _SQL_UPDATE_TASK, params)
        elif writes.task == "read":
            task_cur = await _send(conn, Task, _SQL_GET_TASK, {"id": task_id})
        phase_cur = None
        if writes.task_finished:
            if writes.skip_pending_steps:
                await conn.execute(_SQL_SKIP_PENDING_STEPS, (task_id,))
            phase_cur = await _send(conn, PhaseTally, _SQL_PHASE_TALLY, (task_id,))
    steps = [await _fetch_one(cur) for cur in step_curs]
    task = await _fetch_one(task_cur) if task_cur is not None else None
    phase = await _fetch_one(phase_cur) if phase_cur is not None else None
    return task, steps, phase


async def _send_step_write(conn: Conn, write: StepWrite, floor: dt.datetime | None) -> psycopg.AsyncCursor[Step]:
    params = {"id": write.id, "status": write.status, "exit_code": write.exit_code, "logs": write.logs_s3_key}
    if write.change == "read":
        return await _send(conn, Step, _SQL_GET_STEP, params)
    if write.change == "details":
        return await _send(conn, Step, _SQL_STEP_DETAILS, params)
    times = {"floor": floor, "started_at": write.started_at, "completed_at": write.completed_at}
    return await _send(conn, Step, _SQL_UPDATE_STEP, params | times | {"started": write.change == "start_and_update"})


async def _fetch_one(cur: psycopg.AsyncCursor[R]) -> R:
    row = await cur.fetchone()
    assert row is not None  # the rows exist: they were read under the run lock
    return row


# --- commit statuses ----------------------------------------------------------------------------


async def run_repository(conn: Conn, run_id: str) -> str | None:
    """The repository of a run (a primary-key lookup), for repository-bound tokens."""
    cur = await conn.execute("SELECT repository FROM pipeline.runs WHERE id = %s", (run_id,))
    row = await cur.fetchone()
    return None if row is None else str(row["repository"])


async def add_commit_status(
    conn: Conn, run_id: str, repository: str, commit_sha: str, state: str, description: str
) -> None:
    """Queue the run's commit status (sent after commit, in order per run: forge_common.github)."""
    await github.enqueue(
        conn,
        "pipeline",
        github.GitHubRequest(
            ordering_key=f"run:{run_id}",
            path=f"/repos/{repository}/statuses/{commit_sha}",
            body={
                "state": state,
                "target_url": f"${{public_url}}/v1/runs/{run_id}",
                "description": description,
                "context": "${status_context}",
            },
        ),
    )


# --- webhooks -----------------------------------------------------------------------------------


async def record_delivery(conn: Conn, delivery_id: str, event: str, outcome: str) -> bool:
    """False when this delivery was already processed (a GitHub redelivery)."""
    inserted = await _scalar(
        conn,
        """INSERT INTO pipeline.webhook_deliveries (delivery_id, event, outcome) VALUES (%s, %s, %s)
           ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id""",
        (delivery_id, event, outcome),
    )
    return inserted is not None


async def delivery(conn: Conn, delivery_id: str) -> Delivery | None:
    return await _one(
        conn,
        Delivery,
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
           ON CONFLICT (repository_key, tag, commit_sha) DO UPDATE SET run_id = coalesce(EXCLUDED.run_id, pipeline.tag_pushes.run_id)""",
        (uuid.uuid4(), repository, tag, commit_sha, pushed_by, run_id),
    )
