"""Discovery: one job on ``pipeline.discovery.{run}``; the reply's plan becomes the run tree."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import structlog

from forge_common import jobs
from forge_common.errors import InvalidRequest
from forge_pipeline import service, store
from forge_pipeline.domain import PhasePlan
from forge_pipeline.records import DispatchRun

from .driver import RunDriver, RunEnded, format_seconds

__all__ = ["discover"]

log = structlog.get_logger(__name__)


async def discover(driver: RunDriver, run: DispatchRun) -> None:
    run_id = driver.run_id
    job_id = str(uuid.uuid4())
    timeout = driver.job_settings.timeout("discovery")
    async with driver.pool.connection() as conn, conn.transaction():
        await store.set_run_running(conn, run_id)
    attempt = jobs.new_attempt()
    waiter = driver.waiter(job_id, attempt)
    job = jobs.DiscoveryJob(
        job_id=job_id,
        run_id=run_id,
        repository=run.repository,
        commit_sha=run.commit_sha,
        branch=run.branch,
        attempt=attempt,
    )
    await driver.queue.publish("discovery", job, f"discovery:{job_id}")
    try:
        raw = await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        await driver.queue.purge_subject(jobs.job_subject(driver.runtime.names, "discovery", run_id))
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
    await _store_plan(driver, reply.result)


async def _store_plan(driver: RunDriver, plan: jobs.DiscoveryResult) -> None:
    try:
        phases = msgspec.convert(msgspec.to_builtins(plan.phases), list[PhasePlan])
        async with driver.pool.connection() as conn, conn.transaction():
            await service.store_discovery(conn, driver.run_id, phases, plan.release_triggers, plan.artifacts)
    except (msgspec.ValidationError, InvalidRequest) as exc:
        # A plan the service refuses would fail the same way on every retry.
        await driver.fail(f"discovery returned an unusable plan: {exc}", "discovery")
        raise RunEnded from exc
    log.info("dispatcher.discovered", run_id=driver.run_id, phases=len(phases))
