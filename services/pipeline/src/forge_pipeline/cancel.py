"""Telling workers that a run was cancelled: ``{prefix}.pipeline.cancel.<run id>``."""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS

from forge_common.nats import Names

__all__ = ["CancelNotice", "CancelNotifier"]

log = structlog.get_logger(__name__)


class CancelNotice(msgspec.Struct, kw_only=True):
    run_id: str
    reason: str = "cancelled"


class CancelNotifier:
    """Core NATS, fire and forget, after the cancellation committed: a worker that misses it
    finds its later status reports refused with 409."""

    def __init__(self, nc: NATS, names: Names) -> None:
        self.nc = nc
        self.names = names
        self._encoder = msgspec.json.Encoder()

    async def __call__(self, run_id: str) -> None:
        try:
            await self.nc.publish(
                self.names.subject(f"pipeline.cancel.{run_id}"), self._encoder.encode(CancelNotice(run_id=run_id))
            )
            await self.nc.flush(timeout=2)
        except Exception as exc:  # noqa: BLE001 - the cancellation itself is committed
            log.warning("pipeline.cancel_publish_failed", run_id=run_id, error=str(exc))
