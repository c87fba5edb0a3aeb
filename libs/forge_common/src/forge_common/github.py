"""Calls to the GitHub REST API through a durable outbox: the API never waits for GitHub.

A service writes each call it wants made with :func:`enqueue` on the same connection, in the
same transaction, as the state change it reports (a run finishing, a release created, a
deployment superseded), into ``<schema>.github_outbox`` (each service's migrations create the
table; the DDL is :data:`OUTBOX_DDL`). :class:`GitHubSender` then posts due rows to
``FORGE_GITHUB_API_URL`` with ``FORGE_GITHUB_TOKEN``:

- rows sharing an ``ordering_key`` go out strictly in order (a run's statuses, a deployment
  target's deployments and statuses), rows of different keys in parallel;
- a failed call is retried with exponential backoff (1 s doubling to 5 min) up to
  ``FORGE_GITHUB_STATUS_MAX_ATTEMPTS``, then given up (logged, counted, kept with its error);
- a call can remember the ``id`` of GitHub's answer (``save_as``, a name starting ``github:``) in
  ``<schema>.github_values``, and later calls name it as ``${github:...}`` in their path or body: a GitHub deployment's statuses
  are posted to the deployment GitHub numbered when it was created;
- ``${public_url}`` in a path or body is the service's ``FORGE_PUBLIC_URL`` at send time (and
  ``GitHubConfig.values`` adds more such names, e.g. the pipeline's status context);
- replicas share the work through ``FOR UPDATE SKIP LOCKED`` and a short lease on claimed rows.

Without a token GitHub reporting is off (one log line at start-up): :func:`enqueue` on a
connection of the service's pool writes nothing (the pool's context says so, :data:`REPORTING`),
and the sender marks any row still due (written while a token was set) skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
import structlog
from prometheus_client import Counter

from .db import Pool, connection_context

__all__ = ["OUTBOX_DDL", "REPORTING", "GitHubConfig", "GitHubRequest", "GitHubSender", "backoff_seconds", "enqueue"]

log = structlog.get_logger(__name__)

GITHUB_REQUESTS = Counter(
    "forge_github_requests_total", "Calls to the GitHub API from the GitHub outbox", ["service", "outcome"]
)

# What every service's migration creates (kept here as the one description of the table; each
# migration file carries a copy because applied migrations must never change).
OUTBOX_DDL = """
CREATE TABLE github_outbox (
    id bigserial PRIMARY KEY,
    ordering_key text NOT NULL,
    method text NOT NULL DEFAULT 'POST',
    path text NOT NULL,
    body jsonb NOT NULL,
    save_as text,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    sent_at timestamptz,
    skipped boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX github_outbox_due_idx ON github_outbox (next_attempt_at, id) WHERE sent_at IS NULL AND NOT skipped;
CREATE INDEX github_outbox_key_idx ON github_outbox (ordering_key, id) WHERE sent_at IS NULL AND NOT skipped;
CREATE INDEX github_outbox_done_idx ON github_outbox (created_at) WHERE sent_at IS NOT NULL OR skipped;
CREATE TABLE github_values (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

# The key of a pool's context (forge_common.db.create_pool) saying whether the service reports
# to GitHub (it has a token); a connection without it (not from a Forge pool) does.
REPORTING = "github_reporting"

_BATCH = 20
_LEASE_SECONDS = 60.0
_RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


# ${name} is replaced by the sender's value of that name (GitHubConfig.values, public_url) or by a
# saved value (names starting "github:"); any other ${...} in user text is sent as written.
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+|github:[A-Za-z0-9_:.\-]+)\}")


@dataclass(frozen=True)
class GitHubRequest:
    """One GitHub API call: ``path`` below the API root, a JSON ``body``."""

    ordering_key: str
    path: str
    body: Mapping[str, Any]
    method: str = "POST"
    save_as: str | None = None  # remember the answer's "id" under this name (starts with "github:")

    def __post_init__(self) -> None:
        if self.save_as is not None and not (
            self.save_as.startswith("github:") and _PLACEHOLDER.fullmatch(f"${{{self.save_as}}}")
        ):
            raise ValueError(f"save_as {self.save_as!r} must be 'github:' followed by letters, digits, _ : . -")


@dataclass(frozen=True)
class GitHubConfig:
    api_url: str
    token: str
    public_url: str
    poll_interval: float = 0.5
    max_attempts: int = 8
    retention: float = 7 * 86400.0  # sent and given-up rows are purged after this
    values: Mapping[str, str] = field(default_factory=dict)  # more ${name} values besides public_url
    user_agent: str = "forge"


def backoff_seconds(attempts: int) -> float:
    return float(min(2 ** max(attempts - 1, 0), 300))


async def enqueue(conn: psycopg.AsyncConnection[Any], schema: str, request: GitHubRequest) -> None:
    """Queue ``request``; it is sent once (and only if) the caller's transaction commits. Nothing
    is written when the service does not report to GitHub (no token): rows nobody would send."""
    if connection_context(conn).get(REPORTING) is False:
        return
    await conn.execute(
        f'INSERT INTO "{schema}".github_outbox (ordering_key, method, path, body, save_as) VALUES (%s, %s, %s, %s, %s)',
        (request.ordering_key, request.method, request.path, json.dumps(dict(request.body)), request.save_as),
    )


@dataclass(frozen=True)
class _Due:
    id: int
    ordering_key: str
    method: str
    path: str
    body: dict[str, Any]
    save_as: str | None
    attempts: int


class GitHubSender:
    """The background loop posting one service's GitHub outbox."""

    def __init__(self, pool: Pool, schema: str, service: str, config: GitHubConfig) -> None:
        self.pool = pool
        self.schema = schema
        self.service = service
        self.config = config
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._last_purge = 0.0

    def start(self) -> None:
        if not self.config.token:
            log.info("github.disabled", service=self.service, reason="no FORGE_GITHUB_TOKEN configured; calls skipped")
        self._task = asyncio.create_task(self._run(), name=f"github-outbox-{self.schema}")

    def wake(self) -> None:
        """Look for due rows now (a caller that just committed some) instead of at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        idle = self.config.poll_interval if self.config.token else max(self.config.poll_interval, 5.0)
        while True:
            try:
                busy = await self.tick()
                await self._purge_now_and_then()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("github.outbox_loop_error", service=self.service, error=str(exc))
                busy = False
            if not busy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle)

    async def tick(self) -> bool:
        """Send one batch of due calls; True when there may be more right away."""
        async with self.pool.connection() as conn, conn.transaction():
            if not self.config.token:
                await conn.execute(
                    f'UPDATE "{self.schema}".github_outbox SET skipped = true,'
                    " last_error = 'no FORGE_GITHUB_TOKEN configured' WHERE sent_at IS NULL AND NOT skipped"
                )
                return False
            rows = await self._claim(conn)
            values = await self._values(conn, rows)
        if not rows:
            return False
        results = await asyncio.gather(*(self._send(row, values) for row in rows))
        async with self.pool.connection() as conn, conn.transaction():
            settled = [
                await self._settle(conn, row, outcome, error, answer_id)
                for row, (outcome, error, answer_id) in zip(rows, results, strict=True)
            ]
        for outcome in settled:  # counted once the outcome is recorded
            GITHUB_REQUESTS.labels(self.service, outcome).inc()
        return len(rows) == _BATCH

    async def _claim(self, conn: psycopg.AsyncConnection[Any]) -> list[_Due]:
        """Due rows, oldest first, at most one per ordering key (each key's calls go in order);
        each claimed row is leased by pushing its next attempt into the future."""
        s = self.schema
        cur = await conn.execute(
            f"""
            WITH due AS (
                SELECT c.id FROM "{s}".github_outbox c
                WHERE c.sent_at IS NULL AND NOT c.skipped AND c.next_attempt_at <= now()
                  AND NOT EXISTS (SELECT 1 FROM "{s}".github_outbox e
                                  WHERE e.ordering_key = c.ordering_key AND e.id < c.id
                                    AND e.sent_at IS NULL AND NOT e.skipped)
                ORDER BY c.next_attempt_at, c.id LIMIT %s FOR UPDATE SKIP LOCKED
            )
            UPDATE "{s}".github_outbox c SET next_attempt_at = now() + make_interval(secs => %s),
                attempts = c.attempts + 1
            FROM due WHERE c.id = due.id
            RETURNING c.id, c.ordering_key, c.method, c.path, c.body, c.save_as, c.attempts
            """,
            (_BATCH, _LEASE_SECONDS),
        )
        rows = [
            _Due(
                id=r["id"],
                ordering_key=r["ordering_key"],
                method=r["method"],
                path=r["path"],
                body=r["body"],
                save_as=r["save_as"],
                attempts=r["attempts"],
            )
            for r in await cur.fetchall()
        ]
        rows.sort(key=lambda r: r.id)
        return rows

    async def _values(self, conn: psycopg.AsyncConnection[Any], rows: list[_Due]) -> dict[str, str]:
        names: set[str] = set()
        for row in rows:
            names.update(_saved_names(row.path + json.dumps(row.body)))
        values = {**self.config.values, "public_url": self.config.public_url.rstrip("/")}
        if names:
            cur = await conn.execute(
                f'SELECT name, value FROM "{self.schema}".github_values WHERE name = ANY(%s)', (sorted(names),)
            )
            values.update({r["name"]: r["value"] for r in await cur.fetchall()})
        return values

    async def _settle(
        self, conn: psycopg.AsyncConnection[Any], row: _Due, outcome: str, error: str, answer_id: str | None
    ) -> str:
        """Record what became of ``row``; returns sent, retry or give_up."""
        s = self.schema
        if outcome == "sent":
            await conn.execute(
                f'UPDATE "{s}".github_outbox SET sent_at = now(), last_error = NULL WHERE id = %s', (row.id,)
            )
            if row.save_as and answer_id is not None:
                await conn.execute(
                    f'INSERT INTO "{s}".github_values (name, value) VALUES (%s, %s)'
                    " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    (row.save_as, answer_id),
                )
            return "sent"
        if outcome == "retry" and row.attempts < self.config.max_attempts:
            await conn.execute(
                f'UPDATE "{s}".github_outbox SET next_attempt_at = now() + make_interval(secs => %s),'
                " last_error = %s WHERE id = %s",
                (backoff_seconds(row.attempts), error[:1000], row.id),
            )
            return "retry"
        log.warning(
            "github.call_gave_up",
            service=self.service,
            ordering_key=row.ordering_key,
            path=row.path,
            attempts=row.attempts,
            error=error,
        )
        await conn.execute(
            f'UPDATE "{s}".github_outbox SET skipped = true, last_error = %s WHERE id = %s', (error[:1000], row.id)
        )
        return "give_up"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10, connect=5))
        return self._session

    async def _send(self, row: _Due, values: Mapping[str, str]) -> tuple[str, str, str | None]:
        """``(outcome, error, id of the answer)``; outcome is sent, retry or give_up."""
        missing = sorted(n for n in _saved_names(row.path + json.dumps(row.body)) if n not in values)
        if missing:
            # The call that would have named it (e.g. creating the GitHub deployment) gave up.
            return "give_up", f"no value for {', '.join(missing)}: the call that records it did not succeed", None
        path = _fill(row.path, values)
        body = _substitute(row.body, values)
        url = f"{self.config.api_url.rstrip('/')}/{path.lstrip('/')}"
        headers = {
            "Authorization": f"Bearer {self.config.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": self.config.user_agent,
        }
        try:
            async with self._client().request(row.method, url, json=body, headers=headers) as resp:
                text = await resp.text()
                if 200 <= resp.status < 300:
                    log.info("github.call_sent", service=self.service, path=path, status=resp.status)
                    return "sent", "", _answer_id(text)
                rate_limited = resp.status == 403 and resp.headers.get("x-ratelimit-remaining") == "0"
                outcome = "retry" if resp.status in _RETRYABLE or rate_limited else "give_up"
                return outcome, f"HTTP {resp.status}: {text[:300]}", None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return "retry", f"{type(exc).__name__}: {exc}", None
        except Exception as exc:  # noqa: BLE001 - counted as an attempt, so it ends in give-up
            return "retry", f"{type(exc).__name__}: {exc}", None

    async def _purge_now_and_then(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_purge < 3600.0:
            return
        self._last_purge = now
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                f'DELETE FROM "{self.schema}".github_outbox WHERE id IN ('
                f'SELECT id FROM "{self.schema}".github_outbox'
                " WHERE (sent_at IS NOT NULL OR skipped) AND created_at < now() - make_interval(secs => %s)"
                " LIMIT 10000)",
                (self.config.retention,),
            )


def _saved_names(text: str) -> set[str]:
    return {match[1] for match in _PLACEHOLDER.finditer(text) if match[1].startswith("github:")}


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), text)


def _substitute(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _fill(value, values)
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


def _answer_id(text: str) -> str | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("id") is not None:
        return str(answer["id"])
    return None
