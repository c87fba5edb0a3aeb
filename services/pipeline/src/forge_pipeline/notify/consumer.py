"""The fan-out: ``FORGE_EVENTS`` through a durable consumer into one delivery per subscription.

The consumer (``PIPELINE_WEBHOOKS``, pull, explicit ack) is shared by the replicas, so each
event is fanned out by one of them. A batch of messages becomes delivery rows in one
transaction, and the messages are acknowledged only after it committed: a process that dies
in between has its messages redelivered (``ack_wait``), and the unique (subscription, event)
key makes that second fan-out insert nothing. At least once from NATS, exactly one delivery
row per event and subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from forge_common.db import Pool
from forge_common.nats import Names

from . import store
from .domain import EventProbe, Subscription, matches
from .store import NewDelivery

__all__ = ["CONSUMER", "EventFanOut", "consumer_config", "fan_out"]

log = structlog.get_logger(__name__)

CONSUMER = "PIPELINE_WEBHOOKS"
_BATCH = 100
_ACK_WAIT = 30.0


def consumer_config(names: Names) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=names.durable(CONSUMER),
        filter_subject=names.event_subject(">"),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=_ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=10_000,
    )


def _event_time(probe: EventProbe) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(probe.timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def fan_out(messages: list[bytes], subscriptions: list[Subscription]) -> list[NewDelivery]:
    """The deliveries of a batch of raw envelopes (undecodable ones are dropped)."""
    found: list[NewDelivery] = []
    for raw in messages:
        try:
            probe = msgspec.json.decode(raw, type=EventProbe)
        except msgspec.DecodeError:
            log.warning("webhooks.undecodable_event", size=len(raw))
            continue
        at = _event_time(probe)
        for subscription in subscriptions:
            if matches(subscription, probe, at):
                found.append(NewDelivery(subscription.id, probe.event_id[:200], probe.event_type[:200], raw))
    return found


class EventFanOut:
    def __init__(
        self, pool: Pool, js: JetStreamContext, names: Names, retry_for: float, on_new: Callable[[], None]
    ) -> None:
        self.pool = pool
        self.js = js
        self.names = names
        self.retry_for = retry_for
        self.on_new = on_new
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Create (or keep) the durable consumer; a NATS refusal here stops the start-up, as it
        should: webhooks would silently not be sent."""
        await self.js.add_consumer(self.names.events_stream, consumer_config(self.names))
        sub = await self.js.pull_subscribe_bind(durable=self.names.durable(CONSUMER), stream=self.names.events_stream)
        self._task = asyncio.create_task(self._run(sub), name="pipeline.webhook-fan-out")

    async def stop(self) -> None:
        """Finish the batch under way (its transaction and acks), then stop."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 10)

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(_BATCH, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS reconnecting; the client retries
                log.warning("webhooks.fetch_failed", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            await self._handle(msgs)

    async def _handle(self, msgs: list[Msg]) -> None:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                subscriptions = await store.active_subscriptions(conn)
                new = await store.insert_deliveries(
                    conn, fan_out([m.data for m in msgs], subscriptions), self.retry_for
                )
        except Exception as exc:  # noqa: BLE001 - not acked: redelivered after ack_wait
            log.warning("webhooks.fan_out_failed", events=len(msgs), error=str(exc))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=5.0)
            return
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.ack()
        if new:
            self.on_new()
