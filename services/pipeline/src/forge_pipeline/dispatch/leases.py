"""Run leases: which replica drives which run.

Replicas share runs through row leases in Postgres (``FOR UPDATE SKIP LOCKED`` with expiry,
renewed every third of the TTL). The claim loop leases runs nobody drives and starts a driver
for each; it wakes on the pipeline outbox's ``NOTIFY`` (a run was created) and polls otherwise.
The renewal loop extends the leases of the runs being driven and stops a driver whose run was
taken over by another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import psycopg
import structlog

from forge_common.db import Pool
from forge_pipeline import execution_store
from forge_pipeline.records import DispatchRun

from .settings import DispatcherSettings

__all__ = ["LeaseKeeper"]

log = structlog.get_logger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        pool: Pool,
        database_url: str,
        owner: str,
        settings: DispatcherSettings,
        drivers: dict[str, asyncio.Task[None]],
        start_driver: Callable[[DispatchRun], None],
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.owner = owner
        self.settings = settings
        # Shared with the dispatcher: run id -> the task driving it.
        self.drivers = drivers
        self.start_driver = start_driver
        self.wake = asyncio.Event()
        self.stopping = False

    async def claim_loop(self) -> None:
        while True:
            try:
                await self.claim_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database restarting; try again
                log.warning("dispatcher.claim_failed", error=str(exc))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.dispatcher_poll_interval)

    async def claim_once(self) -> list[str]:
        room = self.settings.dispatcher_max_runs - len(self.drivers)
        if room <= 0 or self.stopping:
            return []
        async with self.pool.connection() as conn, conn.transaction():
            claimed = await execution_store.claim_runs(
                conn, self.owner, self.settings.dispatcher_lease_ttl, room, list(self.drivers)
            )
        for run in claimed:
            self.start_driver(run)
        return [run.id for run in claimed]

    async def listen(self) -> None:
        """Wake the claim loop when a run is created (its event lands in the outbox)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute('LISTEN "forge_outbox_pipeline"')
                    self.wake.set()
                    async for _ in conn.notifies():
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap
                log.warning("dispatcher.listen_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def renew_loop(self) -> None:
        interval = self.settings.dispatcher_lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self.drivers:
                continue
            try:
                await self.renew_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again within the TTL
                log.warning("dispatcher.renew_failed", error=str(exc))

    async def renew_once(self) -> None:
        """Renew the leases of the runs driven now; stop a driver whose run the database says
        is no longer ours. Only the drivers the query asked about are judged by its answer: a
        run claimed while the query was in flight is not in it, and is not lost."""
        asked = dict(self.drivers)
        async with self.pool.connection() as conn, conn.transaction():
            states = await execution_store.renew_leases(
                conn, self.owner, self.settings.dispatcher_lease_ttl, list(asked)
            )
        for run_id, task in asked.items():
            state = states.get(run_id)
            # No row: the run is gone. Owner NULL: this replica handed it over itself (release).
            if state is None or state.lease_owner not in (None, self.owner):
                log.warning("dispatcher.lease_lost", run_id=run_id, owner=state and state.lease_owner)
                task.cancel()

    async def release(self, run_ids: list[str]) -> None:
        """Hand runs over at once instead of letting their leases expire."""
        async with self.pool.connection() as conn, conn.transaction():
            for run_id in run_ids:
                await execution_store.release_lease(conn, self.owner, run_id)
