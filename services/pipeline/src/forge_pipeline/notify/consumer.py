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
from nats.js.errors import NotFoundError

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
_CHECK_AFTER_IDLE_FETCHES = 5  # empty one-second fetches


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
        sub = await self._bind()
        self._task = asyncio.create_task(self._run(sub), name="pipeline.webhook-fan-out")

    async def _bind(self) -> JetStreamContext.PullSubscription:
        await self.js.add_consumer(self.names.events_stream, consumer_config(self.names))
        return await self.js.pull_subscribe_bind(durable=self.names.durable(CONSUMER), stream=self.names.events_stream)

    async def stop(self) -> None:
        """Finish the batch under way (its transaction and acks), then stop."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 10)

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        idle = 0
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(_BATCH, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    # A deleted consumer looks like a quiet one to a pull (the server answers 409,
                    # which the client reports as a timeout): ask now and then whether it exists.
                    idle += 1
                    if idle % _CHECK_AFTER_IDLE_FETCHES == 0 and not await self._exists():
                        sub = await self._rebind(sub)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS away, or the consumer lost with its stream
                    log.warning("webhooks.fetch_failed", error=str(exc))
                    await asyncio.sleep(1.0)
                    sub = await self._rebind(sub)
                    continue
                await self._handle(msgs)
        finally:
            # Its inbox would otherwise keep the late answers to the last pulls, which the
            # connection's drain at shutdown waits for (30 s by default).
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _exists(self) -> bool:
        try:
            await self.js.consumer_info(self.names.events_stream, self.names.durable(CONSUMER))
        except NotFoundError:
            return False
        except Exception:  # noqa: BLE001 - NATS away: the fetches will say so
            return True
        return True

    async def _rebind(self, sub: JetStreamContext.PullSubscription) -> JetStreamContext.PullSubscription:
        """The consumer again (a NATS server that lost its store comes back without it); the old
        subscription while NATS cannot be asked."""
        try:
            fresh = await self._bind()
        except Exception as exc:  # noqa: BLE001 - retried after the next failed fetch
            log.warning("webhooks.rebind_failed", error=str(exc))
            return sub
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return fresh

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
