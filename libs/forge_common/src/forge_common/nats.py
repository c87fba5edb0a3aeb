"""NATS connection and naming helpers.

All stream names and subjects go through :class:`Names` so that one prefix (empty in
production, one per test session in tests) isolates deployments sharing a NATS server.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

__all__ = ["EVENTS_STREAM", "Names", "Reconnects", "connect", "ensure_stream", "reconnects"]

EVENTS_STREAM = "FORGE_EVENTS"
log = structlog.get_logger(__name__)


class Names:
    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix.strip(".")

    def subject(self, subject: str) -> str:
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def stream(self, name: str) -> str:
        return f"{self.prefix.upper().replace('.', '_')}_{name}" if self.prefix else name

    def durable(self, name: str) -> str:
        return self.stream(name)

    def strip(self, subject: str) -> str:
        p = self.prefix + "."
        return subject[len(p) :] if self.prefix and subject.startswith(p) else subject

    @property
    def events_stream(self) -> str:
        return self.stream(EVENTS_STREAM)

    def event_subject(self, event_type: str) -> str:
        return self.subject(f"events.{event_type}")


class Reconnects:
    """How often a client's connection came back. Core NATS keeps nothing for a subscriber
    that is away: a reply published while the server restarted is gone, so whoever waits for
    one asks again after a reconnect (``changed`` wakes it)."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def bump(self) -> None:
        self.count += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self) -> None:
        await self._changed.wait()


_RECONNECTS: weakref.WeakKeyDictionary[NATS, Reconnects] = weakref.WeakKeyDictionary()


def reconnects(nc: NATS) -> Reconnects:
    """The reconnect count of a client made by :func:`connect` (a fresh one for any other)."""
    found = _RECONNECTS.get(nc)
    if found is None:
        found = _RECONNECTS[nc] = Reconnects()
    return found


async def connect(url: str, name: str, **kwargs: Any) -> NATS:
    """Connect, retrying until the server answers; reconnects forever afterwards."""

    async def _disconnected() -> None:
        log.warning("nats.disconnected", client=name)

    counter = Reconnects()

    async def _reconnected() -> None:
        log.info("nats.reconnected", client=name)
        counter.bump()

    async def _error(exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            # This identity may not do that (docs/operations.md, "NATS credentials"): a bug or a
            # permission model out of step with the server's configuration, never routine.
            log.error("nats.permission_denied", client=name, error=text)
        else:
            log.debug("nats.error", client=name, error=text)

    options: dict[str, Any] = {
        "servers": [url],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "disconnected_cb": _disconnected,
        "reconnected_cb": _reconnected,
        "error_cb": _error,
        # A service's shutdown drains its subscriptions; bounded well inside the 30 s a
        # Kubernetes pod gets between SIGTERM and SIGKILL (nats-py's default is those 30 s).
        "drain_timeout": 5,
    }
    options.update(kwargs)
    delay = 0.2
    for attempt in range(30):
        try:
            nc = await nats.connect(**options)
            _RECONNECTS[nc] = counter
            return nc
        except Exception as exc:
            if attempt == 29:
                raise
            log.warning("nats.connect_retry", client=name, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise RuntimeError("unreachable")


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to ``config``; safe when replicas race."""
    try:
        await js.add_stream(config)
    except BadRequestError:
        try:
            await js.update_stream(config)
        except (BadRequestError, NotFoundError) as exc:
            log.warning("nats.stream_update_failed", stream=config.name, error=str(exc))


def events_stream_config(names: Names) -> StreamConfig:
    return StreamConfig(
        name=names.events_stream,
        subjects=[names.subject("events.>")],
        storage=StorageType.FILE,
        duplicate_window=600.0,  # seconds; dedup window for outbox re-publishes
        max_age=7 * 24 * 3600.0,
    )
