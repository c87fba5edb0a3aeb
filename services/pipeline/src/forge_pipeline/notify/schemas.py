"""The HTTP contract of outgoing webhooks (msgspec Structs)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from forge_common.events import isoformat, isoformat_or_none

from .domain import Subscription
from .store import Delivery

__all__ = [
    "DeliveryList",
    "DeliveryView",
    "SubscriptionCreate",
    "SubscriptionCreated",
    "SubscriptionList",
    "SubscriptionUpdate",
    "SubscriptionView",
]

_SUBSCRIPTION_EXAMPLE: dict[str, Any] = {
    "id": "5b1c8f0e-2a4d-4e6f-8a1b-3c5d7e9f1a2b",
    "url": "https://hooks.example.com/forge",
    "event_types": ["pipeline.run.*", "release.created"],
    "repository": "mycompany/myrepo",
    "environment": None,
    "active": True,
    "disabled_reason": None,
    "failing_since": None,
    "created_by": "dev@example.com",
    "created_at": "2025-10-05T12:00:00Z",
    "updated_at": "2025-10-05T12:00:00Z",
}


class SubscriptionCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "url": "https://hooks.example.com/forge",
        "event_types": ["pipeline.run.*", "release.created"],
        "repository": "mycompany/myrepo",
    }

    url: str
    # Globs over the event types (`pipeline.run.*`, `*`); each must match at least one.
    event_types: list[str]
    # Only events whose data.repository is this one (case-insensitive); required for developers.
    repository: str | None = None
    # Only events whose data.environment is this one (dev, staging, production).
    environment: str | None = None
    active: bool = True


class SubscriptionUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields left out stay as they are; `null` clears a filter. `active: true` re-enables a
    disabled subscription (and clears `disabled_reason`)."""

    example: ClassVar[dict[str, Any]] = {"active": True}

    url: str | msgspec.UnsetType = msgspec.UNSET
    event_types: list[str] | msgspec.UnsetType = msgspec.UNSET
    repository: str | msgspec.UnsetType | None = msgspec.UNSET
    environment: str | msgspec.UnsetType | None = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class SubscriptionView(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = _SUBSCRIPTION_EXAMPLE

    id: str
    url: str
    event_types: list[str]
    repository: str | None
    environment: str | None
    active: bool
    # Why the subscription stopped receiving deliveries (the failure rule, or who turned it off).
    disabled_reason: str | None
    # Start of the current unbroken run of failed attempts; null after a success.
    failing_since: str | None
    created_by: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, s: Subscription) -> SubscriptionView:
        return cls(
            id=s.id,
            url=s.url,
            event_types=list(s.event_types),
            repository=s.repository,
            environment=s.environment,
            active=s.active,
            disabled_reason=s.disabled_reason,
            failing_since=isoformat_or_none(s.failing_since),
            created_by=s.created_by,
            created_at=isoformat(s.created_at),
            updated_at=isoformat(s.updated_at),
        )


class SubscriptionCreated(SubscriptionView, kw_only=True):
    """The subscription with its signing secret: the only answer that shows the secret."""

    example: ClassVar[dict[str, Any]] = {
        **_SUBSCRIPTION_EXAMPLE,
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }

    secret: str


class SubscriptionList(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {"subscriptions": [_SUBSCRIPTION_EXAMPLE], "next_cursor": None}

    subscriptions: list[SubscriptionView]
    # Opaque: pass it as ?cursor= (with the same filters) for the next page; null on the last.
    next_cursor: str | None = None


class DeliveryView(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
        "subscription_id": "5b1c8f0e-2a4d-4e6f-8a1b-3c5d7e9f1a2b",
        "event_id": "3f2e1d0c-9b8a-4f7e-8d6c-5b4a3f2e1d0c",
        "event_type": "pipeline.run.completed",
        "status": "pending",
        "attempt": 2,
        "response_status": 503,
        "response_body": "upstream unavailable",
        "duration_ms": 41,
        "error": "HTTP 503",
        "next_retry_at": "2025-10-05T12:00:15Z",
        "last_attempt_at": "2025-10-05T12:00:05Z",
        "created_at": "2025-10-05T12:00:00Z",
    }

    id: str
    subscription_id: str
    event_id: str
    event_type: str
    # pending: an attempt is due or scheduled; succeeded; failed: no attempt left (the retry
    # window closed) - `POST .../redeliver` makes one more.
    status: Literal["pending", "succeeded", "failed"]
    # Attempts made so far.
    attempt: int
    # Of the last attempt: the target's status code, the first 4 KB of its answer, how long it
    # took, and what went wrong (null when it succeeded).
    response_status: int | None
    response_body: str | None
    duration_ms: int | None
    error: str | None
    # When the next attempt is due (null unless pending).
    next_retry_at: str | None
    last_attempt_at: str | None
    created_at: str

    @classmethod
    def of(cls, d: Delivery) -> DeliveryView:
        return cls(
            id=d.id,
            subscription_id=d.subscription_id,
            event_id=d.event_id,
            event_type=d.event_type,
            status=d.status,
            attempt=d.attempt,
            response_status=d.response_status,
            response_body=d.response_body,
            duration_ms=d.duration_ms,
            error=d.error,
            next_retry_at=isoformat(d.next_attempt_at) if d.status == "pending" else None,
            last_attempt_at=isoformat_or_none(d.last_attempt_at),
            created_at=isoformat(d.created_at),
        )


class DeliveryList(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {"deliveries": [DeliveryView.example], "next_cursor": None}

    deliveries: list[DeliveryView]
    next_cursor: str | None = None
