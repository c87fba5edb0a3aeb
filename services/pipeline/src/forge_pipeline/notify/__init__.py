"""Outgoing webhooks: subscriptions, the fan-out from ``FORGE_EVENTS`` and the delivery loop
(docs/webhooks.md; the service README's "Outgoing webhooks")."""

from __future__ import annotations

from forge_common.runtime import Runtime
from forge_pipeline.settings import Settings
from forge_pipeline.store import UnitOfWork

from .api import ROUTES, SERVICE_KEY
from .consumer import EventFanOut
from .domain import RetryPolicy
from .sender import DeliveryLoop, SenderSettings
from .service import WebhookService

__all__ = ["ROUTES", "SERVICE_KEY", "Webhooks"]


class Webhooks:
    """What one pipeline process runs for outgoing webhooks."""

    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        self.loop = DeliveryLoop(
            runtime.pool,
            SenderSettings(
                policy=RetryPolicy(
                    first=settings.webhook_retry_first,
                    longest=settings.webhook_retry_longest,
                    retry_for=settings.webhook_retry_for,
                    disable_after=settings.webhook_disable_after,
                ),
                timeout=settings.webhook_timeout,
                allow_private=settings.webhook_allow_private,
                concurrency=settings.webhook_concurrency,
                poll_interval=settings.webhook_poll_interval,
                retention=settings.webhook_delivery_retention,
            ),
        )
        self.fan_out = EventFanOut(
            runtime.pool, runtime.js, runtime.names, settings.webhook_retry_for, on_new=self.loop.wake
        )
        self.service = WebhookService(UnitOfWork(runtime.pool), settings.webhook_allow_private, self.loop.wake)
        self.deliver = settings.webhook_delivery_enabled

    async def start(self) -> None:
        if self.deliver:
            await self.fan_out.start()
            self.loop.start()

    async def stop(self) -> None:
        if self.deliver:
            await self.fan_out.stop()
            await self.loop.stop()
