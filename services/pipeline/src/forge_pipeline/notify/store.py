"""The SQL of outgoing webhooks (tables ``webhook_subscriptions`` and ``subscription_deliveries``,
migration 0090). Every function takes the caller's connection; the caller owns the transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg.rows import kwargs_row

from forge_pipeline.store import Conn

from .domain import DeliveryStatus, Subscription

__all__ = [
    "ClaimedDelivery",
    "Delivery",
    "NewDelivery",
    "Outcome",
    "active_subscriptions",
    "claim_due",
    "delete_subscription",
    "disable",
    "get_delivery",
    "get_subscription",
    "insert_deliveries",
    "insert_subscription",
    "list_deliveries",
    "list_subscriptions",
    "purge_finished",
    "record_failure",
    "record_success",
    "redeliver",
    "update_subscription",
]

R = TypeVar("R")

_SUBSCRIPTION = """id::text AS id, url, event_types, repository, environment, secret, active, disabled_reason,
    failing_since, created_by, created_at, updated_at"""
_DELIVERY = """id::text AS id, subscription_id::text AS subscription_id, event_id, event_type, status::text AS status,
    attempt, next_attempt_at, retry_until, last_attempt_at, response_status, response_body, duration_ms, error,
    created_at"""


@dataclass(frozen=True)
class Delivery:
    id: str
    subscription_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempt: int
    next_attempt_at: dt.datetime
    retry_until: dt.datetime
    last_attempt_at: dt.datetime | None
    response_status: int | None
    response_body: str | None
    duration_ms: int | None
    error: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class NewDelivery:
    subscription_id: str
    event_id: str
    event_type: str
    body: bytes


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to this process for one attempt (``attempt`` is that attempt's number)."""

    id: str
    subscription_id: str
    event_id: str
    attempt: int
    body: bytes
    retry_until: dt.datetime
    url: str
    secret: str


async def _all(conn: Conn, record: type[R], sql: str, params: Sequence[object] | dict[str, Any] = ()) -> list[R]:
    cur = conn.cursor(row_factory=kwargs_row(record))
    await cur.execute(sql, params)
    return await cur.fetchall()


async def _one(conn: Conn, record: type[R], sql: str, params: Sequence[object] | dict[str, Any] = ()) -> R | None:
    rows = await _all(conn, record, sql, params)
    return rows[0] if rows else None


async def insert_subscription(
    conn: Conn,
    *,
    url: str,
    event_types: list[str],
    repository: str | None,
    environment: str | None,
    secret: str,
    active: bool,
    created_by: str,
) -> Subscription:
    row = await _one(
        conn,
        Subscription,
        f"""INSERT INTO pipeline.webhook_subscriptions
                (id, url, event_types, repository, environment, secret, active, created_by)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_SUBSCRIPTION}""",
        (str(uuid.uuid4()), url, event_types, repository, environment, secret, active, created_by),
    )
    assert row is not None
    return row


async def get_subscription(conn: Conn, subscription_id: str, *, lock: bool = False) -> Subscription | None:
    return await _one(
        conn,
        Subscription,
        f"SELECT {_SUBSCRIPTION} FROM pipeline.webhook_subscriptions WHERE id = %s{' FOR UPDATE' if lock else ''}",
        (subscription_id,),
    )


async def list_subscriptions(
    conn: Conn, *, repository: str | None, scoped_only: bool, after: tuple[dt.datetime, str] | None, limit: int
) -> list[Subscription]:
    """Newest first, keyset on ``(created_at, id)``; ``scoped_only``: repository-scoped ones only."""
    where = ["true"]
    params: list[object] = []
    if repository is not None:
        where.append("repository_key = lower(%s)")
        params.append(repository)
    elif scoped_only:
        where.append("repository IS NOT NULL")
    if after is not None:
        where.append("(created_at, id) < (%s, %s::uuid)")
        params += [after[0], after[1]]
    params.append(limit)
    return await _all(
        conn,
        Subscription,
        f"""SELECT {_SUBSCRIPTION} FROM pipeline.webhook_subscriptions WHERE {" AND ".join(where)}
            ORDER BY created_at DESC, id DESC LIMIT %s""",
        params,
    )


async def update_subscription(conn: Conn, subscription_id: str, changes: dict[str, object]) -> Subscription | None:
    """Set the given columns (names from the service, never from the request)."""
    assignments = ", ".join(f"{column} = %({column})s" for column in changes)
    return await _one(
        conn,
        Subscription,
        f"""UPDATE pipeline.webhook_subscriptions SET {assignments}, updated_at = now()
            WHERE id = %(id)s RETURNING {_SUBSCRIPTION}""",
        {**changes, "id": subscription_id},
    )


async def delete_subscription(conn: Conn, subscription_id: str) -> bool:
    cur = await conn.execute("DELETE FROM pipeline.webhook_subscriptions WHERE id = %s", (subscription_id,))
    return cur.rowcount > 0


async def active_subscriptions(conn: Conn) -> list[Subscription]:
    return await _all(conn, Subscription, f"SELECT {_SUBSCRIPTION} FROM pipeline.webhook_subscriptions WHERE active")


async def insert_deliveries(conn: Conn, deliveries: list[NewDelivery], retry_for: float) -> int:
    """Insert, skipping any (subscription, event) already there: the fan-out of a NATS message
    redelivered after a restart adds nothing. Returns how many were new."""
    if not deliveries:
        return 0
    cur = await conn.execute(
        """INSERT INTO pipeline.subscription_deliveries
               (id, subscription_id, event_id, event_type, body, retry_until)
           SELECT d.id, d.subscription_id, d.event_id, d.event_type, d.body, now() + make_interval(secs => %s)
           FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::text[], %s::bytea[])
                AS d(id, subscription_id, event_id, event_type, body)
           ON CONFLICT (subscription_id, event_id) DO NOTHING""",
        (
            retry_for,
            [str(uuid.uuid4()) for _ in deliveries],
            [d.subscription_id for d in deliveries],
            [d.event_id for d in deliveries],
            [d.event_type for d in deliveries],
            [d.body for d in deliveries],
        ),
    )
    return cur.rowcount


async def claim_due(conn: Conn, limit: int, lease: float) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries of active subscriptions for one attempt each.

    ``SKIP LOCKED`` lets replicas claim side by side without waiting for or taking each
    other's rows; the lease (``next_attempt_at`` moved past the attempt's timeout) is what keeps
    a claimed row from being claimed again once this short transaction commits, and what
    hands it to another replica should this process die mid-attempt."""
    return await _all(
        conn,
        ClaimedDelivery,
        """WITH due AS (
               SELECT d.id FROM pipeline.subscription_deliveries d
               JOIN pipeline.webhook_subscriptions s ON s.id = d.subscription_id AND s.active
               WHERE d.status = 'pending' AND d.next_attempt_at <= now()
               ORDER BY d.next_attempt_at
               LIMIT %s
               FOR UPDATE OF d SKIP LOCKED
           )
           UPDATE pipeline.subscription_deliveries d
           SET attempt = d.attempt + 1, next_attempt_at = now() + make_interval(secs => %s)
           FROM due, pipeline.webhook_subscriptions s
           WHERE d.id = due.id AND s.id = d.subscription_id
           RETURNING d.id::text AS id, d.subscription_id::text AS subscription_id, d.event_id, d.attempt, d.body,
                     d.retry_until, s.url, s.secret""",
        (limit, lease),
    )


@dataclass(frozen=True)
class Outcome:
    """What one attempt got back."""

    response_status: int | None
    response_body: str | None
    duration_ms: int
    error: str | None


async def record_success(conn: Conn, claimed: ClaimedDelivery, outcome: Outcome) -> bool:
    """False when the attempt's lease was lost (another process made a later attempt)."""
    cur = await conn.execute(
        """UPDATE pipeline.subscription_deliveries
           SET status = 'succeeded', last_attempt_at = now(), response_status = %s, response_body = %s,
               duration_ms = %s, error = NULL
           WHERE id = %s AND attempt = %s AND status = 'pending'""",
        (outcome.response_status, outcome.response_body, outcome.duration_ms, claimed.id, claimed.attempt),
    )
    if cur.rowcount == 0:
        return False
    await conn.execute(
        """UPDATE pipeline.webhook_subscriptions SET failing_since = NULL
           WHERE id = %s AND failing_since IS NOT NULL""",
        (claimed.subscription_id,),
    )
    return True


async def record_failure(
    conn: Conn, claimed: ClaimedDelivery, outcome: Outcome, retry_in: float, started: dt.datetime
) -> tuple[bool, Subscription | None]:
    """Record a failed attempt: retried ``retry_in`` seconds from now, or failed for good when
    that is past the delivery's retry window. Returns (recorded, the subscription locked, with
    ``failing_since`` set) so that the caller can decide whether to disable it."""
    cur = await conn.execute(
        """UPDATE pipeline.subscription_deliveries
           SET status = CASE WHEN now() + make_interval(secs => %(retry_in)s) > retry_until
                             THEN 'failed'::pipeline.webhook_delivery_status ELSE 'pending' END,
               next_attempt_at = now() + make_interval(secs => %(retry_in)s),
               last_attempt_at = now(), response_status = %(status)s, response_body = %(body)s,
               duration_ms = %(duration)s, error = %(error)s
           WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'pending'""",
        {
            "retry_in": retry_in,
            "status": outcome.response_status,
            "body": outcome.response_body,
            "duration": outcome.duration_ms,
            "error": outcome.error,
            "id": claimed.id,
            "attempt": claimed.attempt,
        },
    )
    if cur.rowcount == 0:
        return False, None
    subscription = await _one(
        conn,
        Subscription,
        f"""UPDATE pipeline.webhook_subscriptions SET failing_since = coalesce(failing_since, %s)
            WHERE id = %s RETURNING {_SUBSCRIPTION}""",
        (started, claimed.subscription_id),
    )
    return True, subscription


async def disable(conn: Conn, subscription_id: str, reason: str) -> None:
    await conn.execute(
        """UPDATE pipeline.webhook_subscriptions SET active = false, disabled_reason = %s, updated_at = now()
           WHERE id = %s AND active""",
        (reason, subscription_id),
    )


async def list_deliveries(
    conn: Conn, subscription_id: str, after: tuple[dt.datetime, str] | None, limit: int
) -> list[Delivery]:
    params: list[object] = [subscription_id]
    keyset = ""
    if after is not None:
        keyset = "AND (created_at, id) < (%s, %s::uuid)"
        params += [after[0], after[1]]
    params.append(limit)
    return await _all(
        conn,
        Delivery,
        f"""SELECT {_DELIVERY} FROM pipeline.subscription_deliveries WHERE subscription_id = %s {keyset}
            ORDER BY created_at DESC, id DESC LIMIT %s""",
        params,
    )


async def get_delivery(conn: Conn, subscription_id: str, delivery_id: str) -> Delivery | None:
    return await _one(
        conn,
        Delivery,
        f"SELECT {_DELIVERY} FROM pipeline.subscription_deliveries WHERE id = %s AND subscription_id = %s",
        (delivery_id, subscription_id),
    )


async def redeliver(conn: Conn, subscription_id: str, delivery_id: str) -> Delivery | None:
    """Due now; a delivery whose retry window closed gets this one attempt (no automatic retry
    after it), one still in its window keeps retrying on schedule."""
    return await _one(
        conn,
        Delivery,
        f"""UPDATE pipeline.subscription_deliveries
            SET status = 'pending', next_attempt_at = now(), retry_until = greatest(retry_until, now())
            WHERE id = %s AND subscription_id = %s RETURNING {_DELIVERY}""",
        (delivery_id, subscription_id),
    )


async def purge_finished(conn: Conn, older_than: float, limit: int = 1000) -> int:
    """Delete up to ``limit`` succeeded or failed deliveries created more than ``older_than``
    seconds ago (pending ones are kept whatever their age)."""
    cur = await conn.execute(
        """DELETE FROM pipeline.subscription_deliveries WHERE id IN (
               SELECT id FROM pipeline.subscription_deliveries
               WHERE status <> 'pending' AND created_at < now() - make_interval(secs => %s)
               LIMIT %s FOR UPDATE SKIP LOCKED)""",
        (older_than, limit),
    )
    return cur.rowcount
