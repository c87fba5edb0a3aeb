"""Use cases of outgoing webhook subscriptions; reached from HTTP (api.py).

Who may do what (``domain.require_manage``): admins manage every subscription; developers
only subscriptions with a repository filter (any repository; a repository-bound token only its
own). A subscription outside the caller's reach is a 403, an unknown one a 404.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import structlog

from forge_common import cursor
from forge_common.auth import Principal
from forge_common.errors import Conflict, InvalidRequest, NotFound
from forge_common.http import parse_page
from forge_pipeline.store import Conn, UnitOfWork

from . import domain, store
from .domain import Subscription
from .schemas import (
    DeliveryList,
    DeliveryView,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionUpdate,
    SubscriptionView,
)
from .targets import check_target

__all__ = ["WebhookService"]

log = structlog.get_logger(__name__)


def _after(value: str | None, scope: str) -> tuple[dt.datetime, str] | None:
    if value is None:
        return None
    key = cursor.decode(value, scope)
    try:
        return dt.datetime.fromisoformat(str(key[0])), domain.parse_uuid(str(key[1]), "cursor")
    except (ValueError, IndexError):
        raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None


class WebhookService:
    def __init__(self, uow: UnitOfWork, allow_private: bool, wake: Callable[[], None]) -> None:
        self.uow = uow
        self.allow_private = allow_private
        self.wake = wake

    async def create(self, principal: Principal, body: SubscriptionCreate) -> SubscriptionCreated:
        repository = domain.parse_repository(body.repository)
        domain.require_manage(principal, repository)
        target = domain.parse_target(body.url)
        event_types = domain.parse_event_types(body.event_types)
        environment = domain.parse_environment(body.environment)
        await check_target(target, self.allow_private)
        secret = domain.new_secret()
        async with self.uow.begin() as conn:
            created = await store.insert_subscription(
                conn,
                url=target.url,
                event_types=event_types,
                repository=repository,
                environment=environment,
                secret=secret,
                active=body.active,
                created_by=principal.identity,
            )
        log.info("webhooks.subscription_created", subscription_id=created.id, repository=repository)
        view = SubscriptionView.of(created)
        return SubscriptionCreated(**{f: getattr(view, f) for f in view.__struct_fields__}, secret=secret)

    async def list(
        self, principal: Principal, repository: str | None, after: str | None, limit: str | None
    ) -> SubscriptionList:
        repository = domain.parse_repository(repository)
        if principal.repository is not None and repository is None:
            repository = principal.repository
        if repository is not None:
            domain.require_manage(principal, repository)
        size = parse_page(limit, None).limit
        scoped_only = not domain.can_manage(principal, None)
        scope = cursor.fingerprint("webhook-subscriptions", repository=(repository or "").lower(), scoped=scoped_only)
        async with self.uow.begin() as conn:
            rows = await store.list_subscriptions(
                conn, repository=repository, scoped_only=scoped_only, after=_after(after, scope), limit=size + 1
            )
        more = len(rows) > size
        rows = rows[:size]
        next_cursor = cursor.encode(scope, [rows[-1].created_at.isoformat(), rows[-1].id]) if more else None
        return SubscriptionList(subscriptions=[SubscriptionView.of(s) for s in rows], next_cursor=next_cursor)

    async def _load(self, conn: Conn, principal: Principal, subscription_id: str, lock: bool = False) -> Subscription:
        found = await store.get_subscription(conn, domain.parse_uuid(subscription_id, "subscription"), lock=lock)
        if found is None:
            raise NotFound(f"webhook subscription {subscription_id} not found", {"id": subscription_id})
        domain.require_manage(principal, found.repository)
        return found

    async def get(self, principal: Principal, subscription_id: str) -> SubscriptionView:
        async with self.uow.begin() as conn:
            return SubscriptionView.of(await self._load(conn, principal, subscription_id))

    async def update(self, principal: Principal, subscription_id: str, body: SubscriptionUpdate) -> SubscriptionView:
        changes: dict[str, object] = {}
        if isinstance(body.url, str):
            target = domain.parse_target(body.url)
            await check_target(target, self.allow_private)
            changes["url"] = target.url
        if isinstance(body.event_types, list):
            changes["event_types"] = domain.parse_event_types(body.event_types)
        if body.repository is None or isinstance(body.repository, str):
            changes["repository"] = domain.parse_repository(body.repository)
        if body.environment is None or isinstance(body.environment, str):
            changes["environment"] = domain.parse_environment(body.environment)
        if isinstance(body.active, bool):
            changes["active"] = body.active
            # Re-enabled: a fresh start for the failure rule. Turned off: say who did it.
            changes["disabled_reason"] = None if body.active else f"disabled by {principal.identity[:200]}"
            if body.active:
                changes["failing_since"] = None
        if "repository" in changes:
            domain.require_manage(principal, changes["repository"])  # type: ignore[arg-type]
        async with self.uow.begin() as conn:
            current = await self._load(conn, principal, subscription_id, lock=True)
            if not changes:
                return SubscriptionView.of(current)
            if changes.get("active") is False and not current.active:
                changes.pop("disabled_reason")  # already off: keep the reason it has
            updated = await store.update_subscription(conn, current.id, changes)
        assert updated is not None
        if updated.active:
            self.wake()
        return SubscriptionView.of(updated)

    async def delete(self, principal: Principal, subscription_id: str) -> None:
        async with self.uow.begin() as conn:
            current = await self._load(conn, principal, subscription_id, lock=True)
            await store.delete_subscription(conn, current.id)

    async def deliveries(
        self, principal: Principal, subscription_id: str, after: str | None, limit: str | None
    ) -> DeliveryList:
        size = parse_page(limit, None).limit
        async with self.uow.begin() as conn:
            subscription = await self._load(conn, principal, subscription_id)
            scope = cursor.fingerprint("webhook-deliveries", subscription=subscription.id)
            rows = await store.list_deliveries(conn, subscription.id, _after(after, scope), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        next_cursor = cursor.encode(scope, [rows[-1].created_at.isoformat(), rows[-1].id]) if more else None
        return DeliveryList(deliveries=[DeliveryView.of(d) for d in rows], next_cursor=next_cursor)

    async def redeliver(self, principal: Principal, subscription_id: str, delivery_id: str) -> DeliveryView:
        delivery = domain.parse_uuid(delivery_id, "delivery")
        async with self.uow.begin() as conn:
            subscription = await self._load(conn, principal, subscription_id, lock=True)
            if not subscription.active:
                raise Conflict(
                    "the subscription is disabled; re-enable it (PATCH active=true) to redeliver",
                    {"id": subscription.id, "disabled_reason": subscription.disabled_reason},
                )
            row = await store.redeliver(conn, subscription.id, delivery)
            if row is None:
                raise NotFound(
                    f"delivery {delivery_id} of subscription {subscription.id} not found", {"id": delivery_id}
                )
        self.wake()
        return DeliveryView.of(row)
