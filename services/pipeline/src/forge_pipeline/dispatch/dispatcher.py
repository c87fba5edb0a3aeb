"""The dispatcher: drives each run it leased through discovery, its phase groups, publications
for tags pushed after the build, and release.

One asyncio task per driven run. Progress is the database, so a replica that takes a run over
continues where the previous one stopped (see ``groups.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace

from forge_common import jobs, metrics
from forge_common.jobs import JobSettings
from forge_common.runtime import Runtime
from forge_common.tracing import extract
from forge_pipeline import service
from forge_pipeline.metrics import JOBS_PENDING
from forge_pipeline.records import DispatchRun

from .argo import ArgoExecutor, ArgoSettings
from .dead_letters import DeadLetters
from .discovery import discover
from .driver import RunDriver, RunEnded
from .groups import run_groups
from .leases import LeaseKeeper
from .publications import publish_for_tags
from .queue import JobQueue
from .releases import await_release, release
from .settings import DispatcherSettings
from .watchdog import Watchdog

__all__ = ["Dispatcher"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.dispatcher")


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        settings: DispatcherSettings,
        job_settings: JobSettings,
        argo: ArgoSettings | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.job_settings = job_settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.drivers: dict[str, asyncio.Task[None]] = {}
        # FORGE_EXECUTOR=argo: CI, artifact and release jobs run as Argo workflows (.argo).
        self.executor = ArgoExecutor(runtime, argo, job_settings) if argo is not None and argo.enabled else None
        self.queue = JobQueue(runtime, self.executor)
        self.leases = LeaseKeeper(
            runtime.pool, runtime.settings.database_url, self.owner, settings, self.drivers, self._start_driver
        )
        self.dead_letters = DeadLetters(runtime, job_settings)
        self.watchdog = Watchdog(
            runtime, self.queue, settings.dispatcher_watchdog_interval, lambda: list(self.drivers), self._fail_run
        )
        self._loops: list[asyncio.Task[None]] = []
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        names = self.runtime.names
        await jobs.ensure_job_streams(self.runtime.js, names, self.job_settings, update=True)
        nc = self.runtime.nc
        self._subscriptions.append(await nc.subscribe(names.subject("pipeline.cancel.*"), cb=self._on_cancel))
        self._subscriptions.append(
            await nc.subscribe(
                jobs.max_deliveries_advisory(names),
                queue="forge-dispatcher-dlq",
                cb=self.dead_letters.on_max_deliveries,
            )
        )
        metrics.add_refresher(self.refresh_jobs_pending)
        self._loops = [
            asyncio.create_task(self.leases.claim_loop(), name="dispatcher-claim"),
            asyncio.create_task(self.leases.renew_loop(), name="dispatcher-renew"),
            asyncio.create_task(self.leases.listen(), name="dispatcher-listen"),
            asyncio.create_task(self.watchdog.loop(), name="dispatcher-watchdog"),
        ]
        log.info("dispatcher.started", owner=self.owner, lease_ttl=self.settings.dispatcher_lease_ttl)

    async def refresh_jobs_pending(self) -> None:
        """``forge_jobs_pending{job_type}``: each consumer's lag, read at scrape time."""
        stream = self.runtime.names.stream(jobs.JOBS_STREAM)
        for job_type in jobs.JOB_TYPES:
            info = await self.runtime.js.consumer_info(stream, jobs.consumer_name(self.runtime.names, job_type))
            JOBS_PENDING.labels(job_type).set(info.num_pending or 0)

    async def stop(self) -> None:
        metrics.remove_refresher(self.refresh_jobs_pending)
        self.leases.stopping = True
        for task in [*self._loops, *self.drivers.values()]:
            task.cancel()
        for task in [*self._loops, *self.drivers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        if self.drivers:
            with contextlib.suppress(Exception):
                await self.leases.release(list(self.drivers))
        self.drivers.clear()
        if self.executor is not None:
            await self.executor.close()

    async def claim_once(self) -> list[str]:
        return await self.leases.claim_once()

    async def _on_cancel(self, msg: Msg) -> None:
        run_id = msg.subject.rsplit(".", 1)[-1]
        task = self.drivers.get(run_id)
        if task is not None:
            task.cancel()
            await self.queue.drop(run_id)

    async def _fail_run(self, run_id: str, reason: str) -> None:
        """The watchdog gave up on one of the run's jobs: fail the run, stop its driver."""
        async with self.runtime.pool.connection() as conn, conn.transaction():
            await service.fail_run(conn, run_id, reason)
        task = self.drivers.get(run_id)
        if task is not None:
            task.cancel()
        await self.queue.cancel_workers(run_id)

    def _start_driver(self, run: DispatchRun) -> None:
        task = asyncio.create_task(self._drive(run), name=f"run-{run.id}")
        self.drivers[run.id] = task
        task.add_done_callback(functools.partial(self._driver_done, run.id))

    def _driver_done(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self.drivers.get(run_id) is task:
            del self.drivers[run_id]
        self.leases.wake.set()

    async def _drive(self, run: DispatchRun) -> None:
        run_id = run.id
        driver = RunDriver(run_id, self.runtime, self.queue, self.owner, self.settings, self.job_settings)
        try:
            await _drive_run(driver, run)
        except asyncio.CancelledError:
            pass
        except RunEnded:
            # Cancelled or failed elsewhere (another replica, the API): what still runs of it
            # on Argo stops (NATS workers hear the cancel message themselves).
            if self.executor is not None:
                await self.executor.stop_run(run_id)
        except Exception:
            log.exception("dispatcher.driver_failed", run_id=run_id)
            await asyncio.sleep(self.settings.dispatcher_poll_interval)
            with contextlib.suppress(Exception):
                await self.leases.release([run_id])
        finally:
            await driver.close()


async def _drive_run(driver: RunDriver, run: DispatchRun) -> None:
    """Drive ``run`` as its claim returned it (leased to this replica just now)."""
    await driver.open_inbox()
    # The span continues the trace of the request that created the run (stored with it), so
    # jobs, worker spans, reports and events of the run share that request's trace id.
    with _tracer.start_as_current_span(
        "dispatch run",
        context=extract(run.trace_context),
        attributes={"forge.run_id": run.id, "forge.repository": run.repository},
    ):
        if run.status in ("pending", "running"):
            plan = await discover(driver, run) if run.discovered_at is None else None
            completed = await run_groups(driver, run, plan)
            if completed.release_evaluated:
                await await_release(driver, completed.release)
                return
        # Before the release: a tag's release then lists the GitHub asset among the URIs.
        await publish_for_tags(driver)
        await release(driver)
