"""Discovery: one job on ``pipeline.discovery.{run}``; the reply's plan becomes the run tree."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import structlog

from forge_common import jobs
from forge_common.errors import Conflict, InvalidRequest
from forge_common.nats import reconnects
from forge_pipeline import service
from forge_pipeline.domain import PhasePlan
from forge_pipeline.records import DispatchRun

from .driver import RunDriver, RunEnded, format_seconds

__all__ = ["discover"]

log = structlog.get_logger(__name__)


async def discover(driver: RunDriver, run: DispatchRun) -> list[PhasePlan]:
    """Ask a worker for the run's plan and store it; the stored plan (ids assigned), which the
    groups then run without reading it back. The run is ``running`` already: its claim made it
    so (execution_store.claim_runs)."""
    run_id = driver.run_id
    timeout = driver.job_settings.timeout("discovery")
    raw = await _ask(driver, run, timeout)
    if raw is None:
        await driver.queue.drop(run_id)
        await driver.fail(f"discovery timed out after {format_seconds(timeout)}", "discovery")
        raise RunEnded from None
    try:
        reply = await driver.queue.read_reply(raw, jobs.DiscoveryResult)
    except msgspec.ValidationError as exc:
        await driver.fail(f"discovery returned an unusable plan: {exc}", "discovery")
        raise RunEnded from exc
    if reply.status != "success":
        await driver.fail(f"discovery failed: {reply.error or 'discovery failed'}", "discovery")
        raise RunEnded
    if reply.result is None:
        await driver.fail("discovery returned an unusable plan: no plan in its reply", "discovery")
        raise RunEnded
    return await _store_plan(driver, reply.result)


async def _ask(driver: RunDriver, run: DispatchRun, timeout: float) -> bytes | None:
    """Publish the discovery job and wait for its reply (None after ``timeout``). A reply sent
    while the connection to NATS was down is lost (core NATS keeps nothing), so after every
    reconnect the job is published again under a new id; the first reply to any copy wins
    (storing the plan is idempotent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    changes = reconnects(driver.runtime.nc)
    waiters: list[asyncio.Future[bytes]] = []
    try:
        while True:
            job_id, attempt = str(uuid.uuid4()), jobs.new_attempt()
            waiters.append(driver.waiter(job_id, attempt))
            job = jobs.DiscoveryJob(
                job_id=job_id,
                run_id=run.id,
                repository=run.repository,
                commit_sha=run.commit_sha,
                branch=run.branch,
                attempt=attempt,
            )
            await driver.queue.publish("discovery", job, f"discovery:{job_id}")
            reconnected: asyncio.Future[Any] = asyncio.ensure_future(changes.changed())
            watched: list[asyncio.Future[Any]] = [*waiters, reconnected]
            left = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait(watched, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
            reconnected.cancel()
            for waiter in waiters:
                if waiter in done:
                    return waiter.result()
            if reconnected not in done:
                return None
            log.info("dispatcher.discovery_republished", run_id=run.id, reason="NATS reconnected")
    finally:
        for waiter in waiters:
            if not waiter.done():
                waiter.cancel()


async def _store_plan(driver: RunDriver, plan: jobs.DiscoveryResult) -> list[PhasePlan]:
    try:
        phases = msgspec.convert(msgspec.to_builtins(plan.phases), list[PhasePlan])
        async with driver.pool.connection() as conn, conn.transaction():
            stored = await service.store_discovery(
                conn,
                driver.run_id,
                phases,
                plan.release_triggers,
                artifacts=plan.artifacts,
                commit_sha=plan.commit_sha,
            )
    except Conflict as exc:
        # One run per full commit SHA: this one duplicates a run created with another spelling.
        await driver.fail(f"duplicate run: {exc.message}", "discovery")
        raise RunEnded from exc
    except (msgspec.ValidationError, InvalidRequest) as exc:
        # A plan the service refuses would fail the same way on every retry.
        await driver.fail(f"discovery returned an unusable plan: {exc}", "discovery")
        raise RunEnded from exc
    log.info("dispatcher.discovered", run_id=driver.run_id, phases=len(stored))
    return stored
