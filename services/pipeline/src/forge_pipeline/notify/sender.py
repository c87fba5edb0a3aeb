"""The delivery loop: sends due deliveries, signed as the Standard Webhooks specification says.

Each replica runs one loop. It leases due deliveries (``store.claim_due``: ``FOR UPDATE SKIP
LOCKED``, then the lease in ``next_attempt_at``), sends each one in its own task (at most
``FORGE_WEBHOOK_CONCURRENCY`` at a time, so one slow target does not hold up the others), and
records each outcome in a short transaction of its own. A replica that dies mid-attempt loses
nothing: the lease runs out and the attempt is made again (at least once, same ``webhook-id``).

An attempt succeeds on a 2xx answer within ``FORGE_WEBHOOK_TIMEOUT`` (10 s). Anything else is a
failure: another status (a 3xx included: redirects are not followed), a timeout, a refused
connection or a target that resolves to an internal address (``targets.py``). A failure is
retried after :meth:`domain.RetryPolicy.delay`, unless that is past the delivery's retry window
(``FORGE_WEBHOOK_RETRY_FOR``, 24 h), when the delivery is ``failed``. A subscription whose
deliveries have all failed for ``FORGE_WEBHOOK_DISABLE_AFTER`` (3 days) is disabled, with the
reason in ``disabled_reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from prometheus_client import Counter
from standardwebhooks.webhooks import Webhook

from forge_common.db import Pool
from forge_common.events import utcnow
from forge_pipeline.store import Conn

from . import store
from .domain import RetryPolicy, parse_target
from .store import ClaimedDelivery, Outcome
from .targets import GuardedResolver, RefusedTarget, check_literal

__all__ = ["DELIVERIES", "MAX_RESPONSE_BODY", "DeliveryLoop", "SenderSettings", "sign_headers"]

log = structlog.get_logger(__name__)

# Counted once the attempt's outcome is recorded: succeeded, retry (failed, another attempt is
# scheduled), failed (failed, no attempt left), disabled (subscriptions disabled by the rule).
DELIVERIES = Counter("forge_webhook_deliveries_total", "Outgoing webhook delivery attempts, by outcome", ["outcome"])
for _outcome in ("succeeded", "retry", "failed", "disabled"):
    DELIVERIES.labels(_outcome)

# Bytes of a target's answer kept with the delivery (the rest is not read).
MAX_RESPONSE_BODY = 4096
USER_AGENT = "Forge-Webhooks/1.0"


@dataclass(frozen=True)
class SenderSettings:
    policy: RetryPolicy
    timeout: float
    allow_private: bool
    concurrency: int
    poll_interval: float
    # Finished deliveries older than this are deleted (hourly, by each replica).
    retention: float = 30 * 24 * 3600.0


def sign_headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``webhook-signature: v1,<base64>`` is
    HMAC-SHA256 with the base64-decoded secret over ``id.timestamp.body``)."""
    at = utcnow() if now is None else _at(now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode("utf-8")),
    }


def _at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class DeliveryLoop:
    def __init__(self, pool: Pool, settings: SenderSettings) -> None:
        self.pool = pool
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._next_purge = 0.0

    def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.settings.allow_private), use_dns_cache=False, limit=0
        )
        # trust_env stays off: a proxy from the environment would connect on our behalf, after
        # the check, to wherever the name then resolves.
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)
        self._task = asyncio.create_task(self._run(), name="pipeline.webhook-deliveries")

    def wake(self) -> None:
        """Look for due deliveries now (new ones were just committed)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; let attempts under way finish and be recorded (each is bounded by the
        timeout), so a restart neither repeats nor loses one."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.settings.timeout + 5)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            claimed = 0
            try:
                free = self.settings.concurrency - len(self._inflight)
                if free > 0:
                    claimed = await self._claim(free)
                await self._purge_now_and_then()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("webhooks.claim_failed", error=str(exc))
            if claimed and len(self._inflight) < self.settings.concurrency:
                continue  # there may be more due right away
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {waiter, *self._inflight}
            try:
                await asyncio.wait(waits, timeout=self.settings.poll_interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def _purge_now_and_then(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + 3600
        async with self.pool.connection() as conn, conn.transaction():
            deleted = await store.purge_finished(conn, self.settings.retention)
        if deleted:
            log.info("webhooks.deliveries_purged", deleted=deleted)

    async def _claim(self, free: int) -> int:
        lease = self.settings.timeout + 30
        async with self.pool.connection() as conn, conn.transaction():
            rows = await store.claim_due(conn, free, lease)
        for row in rows:
            task = asyncio.create_task(self._deliver(row), name=f"webhook-delivery-{row.id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def _deliver(self, claimed: ClaimedDelivery) -> None:
        started = utcnow()
        outcome = await self.attempt(claimed)
        ok = outcome.error is None
        try:
            async with self.pool.connection() as conn, conn.transaction():
                if ok:
                    recorded = await store.record_success(conn, claimed, outcome)
                    label = "succeeded"
                else:
                    recorded, label = await self._record_failure(conn, claimed, outcome, started)
        except Exception as exc:  # noqa: BLE001 - the lease runs out and the attempt is made again
            log.warning("webhooks.record_failed", delivery_id=claimed.id, error=str(exc))
            return
        if recorded:
            DELIVERIES.labels(label).inc()
            log.info(
                "webhooks.attempt",
                delivery_id=claimed.id,
                subscription_id=claimed.subscription_id,
                attempt=claimed.attempt,
                outcome=label,
                status=outcome.response_status,
                error=outcome.error,
            )

    async def _record_failure(
        self, conn: Conn, claimed: ClaimedDelivery, outcome: Outcome, started: dt.datetime
    ) -> tuple[bool, str]:
        policy = self.settings.policy
        retry_in = policy.delay(claimed.attempt)
        recorded, subscription = await store.record_failure(conn, claimed, outcome, retry_in, started)
        if not recorded:
            return False, "retry"
        now = utcnow()
        label = "retry" if (now.timestamp() + retry_in) <= claimed.retry_until.timestamp() else "failed"
        if subscription is not None and subscription.active and subscription.failing_since is not None:
            reason = policy.disable_reason(subscription.failing_since, now, outcome.error or "")
            if reason is not None:
                await store.disable(conn, subscription.id, reason)
                DELIVERIES.labels("disabled").inc()
                log.warning("webhooks.subscription_disabled", subscription_id=subscription.id, reason=reason)
        return True, label

    async def attempt(self, claimed: ClaimedDelivery) -> Outcome:
        """One POST of the delivery's body; never raises."""
        assert self._session is not None
        clock = time.monotonic()
        status: int | None = None
        text: str | None = None
        error: str | None = None
        try:
            check_literal(parse_target(claimed.url), self.settings.allow_private)
            headers = {
                **sign_headers(claimed.secret, claimed.event_id, claimed.body),
                "content-type": "application/json",
                "user-agent": USER_AGENT,
            }
            async with self._session.post(
                claimed.url,
                data=claimed.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as response:
                status = response.status
                text = (await _read_capped(response)).decode("utf-8", errors="replace")
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        except RefusedTarget as exc:
            error = str(exc)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            error = f"no answer within {self.settings.timeout:g}s"
        except aiohttp.ClientError as exc:
            cause = exc.__cause__ or getattr(exc, "os_error", None)
            error = f"{type(exc).__name__}: {cause or exc}"[:1000]
        except Exception as exc:  # noqa: BLE001 - hostile URLs must not kill the loop
            error = f"{type(exc).__name__}: {exc}"[:1000]
        return Outcome(
            response_status=status,
            response_body=text,
            duration_ms=int((time.monotonic() - clock) * 1000),
            error=error,
        )


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    body = b""
    while len(body) < MAX_RESPONSE_BODY:
        part = await response.content.read(MAX_RESPONSE_BODY - len(body))
        if not part:
            break
        body += part
    return body
