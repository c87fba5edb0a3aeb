"""GitHub commit statuses for pipeline runs.

Run changes write a row to ``pipeline.commit_statuses`` in the same transaction as the change
(created -> ``pending``, success -> ``success``, failed -> ``failure``, cancelled -> ``error``).
This background sender posts due rows to ``{FORGE_GITHUB_API_URL}/repos/{repo}/statuses/{sha}``
with ``FORGE_GITHUB_TOKEN``: a run's statuses go out in order, failures are retried with
exponential backoff, and the API never waits for GitHub. Replicas share the work through
``FOR UPDATE SKIP LOCKED`` and a short lease on each claimed row. Without a token, statuses are
skipped (one log line at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog

from . import store
from .records import CommitStatusDue
from .settings import Settings
from .store import UnitOfWork

__all__ = ["CommitStatusSender"]

log = structlog.get_logger(__name__)
_BATCH = 20
_LEASE_SECONDS = 60.0
_RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def backoff_seconds(attempts: int) -> float:
    return float(min(2 ** max(attempts - 1, 0), 300))


class CommitStatusSender:
    def __init__(self, uow: UnitOfWork, settings: Settings) -> None:
        self.uow = uow
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if not self.settings.github_token:
            log.info("github.commit_statuses_disabled", reason="no FORGE_GITHUB_TOKEN configured; statuses are skipped")
        self._task = asyncio.create_task(self._run(), name="github-commit-statuses")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        idle = self.settings.github_status_poll_interval
        while True:
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("github.commit_status_loop_error", error=str(exc))
                busy = False
            if not busy:
                await asyncio.sleep(idle if self.settings.github_token else max(idle, 5.0))

    async def tick(self) -> bool:
        """Send one batch of due statuses; True when there may be more right away."""
        async with self.uow.begin() as conn:
            if not self.settings.github_token:
                await store.skip_all_commit_statuses(conn)
                return False
            rows = await store.claim_commit_statuses(conn, _BATCH, _LEASE_SECONDS)
        if not rows:
            return False
        results = await asyncio.gather(*(self._post(row) for row in rows))
        async with self.uow.begin() as conn:
            for row, (outcome, error) in zip(rows, results, strict=True):
                if outcome == "sent":
                    await store.commit_status_sent(conn, row.id)
                elif outcome == "retry" and row.attempts < self.settings.github_status_max_attempts:
                    await store.commit_status_retry(conn, row.id, backoff_seconds(row.attempts), error)
                else:
                    log.warning(
                        "github.commit_status_gave_up",
                        run_id=row.run_id,
                        repository=row.repository,
                        state=row.state,
                        attempts=row.attempts,
                        error=error,
                    )
                    await store.commit_status_give_up(conn, row.id, error)
        return len(rows) == _BATCH

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10, connect=5))
        return self._session

    async def _post(self, row: CommitStatusDue) -> tuple[str, str]:
        s = self.settings
        url = f"{s.github_api_url.rstrip('/')}/repos/{row.repository}/statuses/{row.commit_sha}"
        body = {
            "state": row.state,
            "target_url": f"{s.public_url.rstrip('/')}/v1/runs/{row.run_id}",
            "description": row.description,
            "context": s.github_status_context,
        }
        headers = {
            "Authorization": f"Bearer {s.github_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "forge-pipeline",
        }
        try:
            async with self._client().post(url, json=body, headers=headers) as resp:
                text = (await resp.text())[:300]
                if 200 <= resp.status < 300:
                    log.info("github.commit_status_sent", run_id=row.run_id, state=row.state)
                    return "sent", ""
                rate_limited = resp.status == 403 and resp.headers.get("x-ratelimit-remaining") == "0"
                outcome = "retry" if resp.status in _RETRYABLE or rate_limited else "give_up"
                return outcome, f"HTTP {resp.status}: {text}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return "retry", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - counted as an attempt, so it ends in give-up
            return "retry", f"{type(exc).__name__}: {exc}"
