"""HTTP routes of outgoing webhook subscriptions: decode, one call into service.py, encode."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, post

from forge_common.auth import Permission, Principal
from forge_common.http import decode_body, strict_query
from forge_common.openapi import body_operation, errors, response
from forge_common.runtime import Runtime

from .schemas import (
    DeliveryList,
    DeliveryView,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionUpdate,
    SubscriptionView,
)
from .service import WebhookService

__all__ = ["ROUTES", "SERVICE_KEY"]

SERVICE_KEY = "pipeline.webhook_subscriptions"
_BASE = "/v1/webhook-subscriptions"
_SCOPE = "developers only subscriptions with a repository filter; admins all"
_PERMISSION = {"permission": Permission.WEBHOOKS_MANAGE}


def _service(runtime: Runtime) -> WebhookService:
    service: WebhookService = runtime.extras[SERVICE_KEY]
    return service


@post(
    _BASE,
    status_code=201,
    opt=_PERMISSION,
    summary="Subscribe a URL to platform events",
    description="The answer carries the signing secret (Standard Webhooks, `whsec_...`): it is shown this once. "
    "Targets resolving to loopback, link-local, private, unique-local, multicast or unspecified addresses are "
    f"refused (400, `details.field: url`). Developers must give `repository`; {_SCOPE}.",
    operation_class=body_operation(SubscriptionCreate, "the target and what to send it"),
    responses={201: response(SubscriptionCreated, "subscribed; the secret is shown only here")},
)
async def create_subscription(
    request: Request[Any, Any, Any], principal: Principal, runtime: Runtime
) -> SubscriptionCreated:
    body = decode_body(await request.body(), SubscriptionCreate)
    return await _service(runtime).create(principal, body)


@get(
    _BASE,
    opt={**_PERMISSION, **strict_query()},
    summary="List webhook subscriptions, newest first",
    description=f"Cursor-paginated (`limit` 1-100, default 20; `next_cursor`); {_SCOPE}.",
    responses={200: response(SubscriptionList, "one page of subscriptions")},
)
async def list_subscriptions(
    runtime: Runtime,
    principal: Principal,
    repository: str | None = None,
    cursor: str | None = None,
    limit: str | None = None,
) -> SubscriptionList:
    return await _service(runtime).list(principal, repository, cursor, limit)


@get(
    f"{_BASE}/{{subscription_id:str}}",
    opt=_PERMISSION,
    summary="One webhook subscription (without its secret)",
    responses={200: response(SubscriptionView, "the subscription")},
)
async def get_subscription(subscription_id: str, runtime: Runtime, principal: Principal) -> SubscriptionView:
    return await _service(runtime).get(principal, subscription_id)


@patch(
    f"{_BASE}/{{subscription_id:str}}",
    opt=_PERMISSION,
    summary="Change a webhook subscription",
    description="Fields left out stay; `null` clears a filter; `active: true` re-enables a disabled subscription.",
    operation_class=body_operation(SubscriptionUpdate, "the fields to change"),
    responses={200: response(SubscriptionView, "the subscription as changed")},
)
async def update_subscription(
    subscription_id: str, request: Request[Any, Any, Any], principal: Principal, runtime: Runtime
) -> SubscriptionView:
    body = decode_body(await request.body(), SubscriptionUpdate)
    return await _service(runtime).update(principal, subscription_id, body)


@delete(
    f"{_BASE}/{{subscription_id:str}}",
    status_code=204,
    opt=_PERMISSION,
    summary="Delete a webhook subscription and its deliveries",
)
async def delete_subscription(subscription_id: str, runtime: Runtime, principal: Principal) -> None:
    await _service(runtime).delete(principal, subscription_id)


@get(
    f"{_BASE}/{{subscription_id:str}}/deliveries",
    opt={**_PERMISSION, **strict_query()},
    summary="A subscription's deliveries, newest first",
    description="Status, attempts, the last attempt's response code, body (4 KB) and duration, and the next "
    "retry. Cursor-paginated (`limit` 1-100, default 20).",
    responses={200: response(DeliveryList, "one page of deliveries")},
)
async def list_deliveries(
    subscription_id: str,
    runtime: Runtime,
    principal: Principal,
    cursor: str | None = None,
    limit: str | None = None,
) -> DeliveryList:
    return await _service(runtime).deliveries(principal, subscription_id, cursor, limit)


@post(
    f"{_BASE}/{{subscription_id:str}}/deliveries/{{delivery_id:str}}/redeliver",
    status_code=202,
    opt=_PERMISSION,
    summary="Send a delivery again now",
    description="Same `webhook-id` and body, a fresh timestamp and signature. A delivery whose retry window "
    "closed gets this one attempt; one still pending is simply due now.",
    responses={
        202: response(DeliveryView, "due now"),
        **errors({409: "the subscription is disabled (re-enable it first)"}),
    },
)
async def redeliver(subscription_id: str, delivery_id: str, runtime: Runtime, principal: Principal) -> DeliveryView:
    return await _service(runtime).redeliver(principal, subscription_id, delivery_id)


ROUTES: list[Any] = [
    create_subscription,
    list_subscriptions,
    get_subscription,
    update_subscription,
    delete_subscription,
    list_deliveries,
    redeliver,
]
