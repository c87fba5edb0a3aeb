"""A run claimed while a lease renewal is in flight is driven, not taken for lost (issue 11).

The interleaving is forced with a real row lock: the test holds the lock on a run this
dispatcher drives, so its renewal query waits inside Postgres; a second run is created and
claimed meanwhile; then the lock is released and the renewal answers. The dispatcher runs in
this process (on the cell's database and NATS prefix, with an API-only pipeline instance and a
worker as separate processes) so the test can start the renewal itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from forge_common.jobs import JobSettings
from forge_common.runtime import Runtime
from forge_common.settings import load
from forge_dev.testing import Platform
from forge_pipeline.dispatch import Dispatcher, DispatcherSettings
from forge_pipeline.settings import Settings

from .conftest import Cell, steps_of

REPO_TOML = """
forge_version = "1"
[phases.first]
group = 1
[phases.second]
group = 2
"""


def project_toml(gate: Path) -> str:
    # The first group's step waits for the test to open the gate, so the run is still being
    # driven when the renewal answers; the second group is dispatched only by a live driver.
    return f"""
name = "app"
[[phases.first.steps]]
name = "wait"
run = "while [ ! -e {gate} ]; do sleep 0.02; done"
timeout = "60s"
[[phases.second.steps]]
name = "after"
run = "echo second group"
"""


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition only another process can make true (no event to subscribe to)."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


@pytest.fixture
async def lease_cell(platform: Platform) -> AsyncIterator[tuple[Cell, Dispatcher]]:
    cell = Cell(platform, "lease")
    runtime: Runtime | None = None
    dispatcher: Dispatcher | None = None
    try:
        cell.start_pipeline(env={"FORGE_DISPATCHER_ENABLED": "false"})
        cell.start_worker()
        environ = {**platform.env(), **cell.env, "FORGE_DISPATCHER_ENABLED": "false", "FORGE_DB_POOL_MAX": "10"}
        settings = load(Settings, environ=environ)
        runtime = Runtime("pipeline", settings, "pipeline", "forge_pipeline.migrations")
        await runtime.start()
        # A TTL far beyond the test: the renewal loop stays asleep (the test renews), and a
        # driver stopped by mistake would leave its run stuck instead of recovering silently.
        dispatcher = Dispatcher(runtime, DispatcherSettings(dispatcher_lease_ttl=600.0), JobSettings())
        await dispatcher.start()
        yield cell, dispatcher
    finally:
        # Bounded: a failed test must still end (and say which part would not stop).
        if dispatcher is not None:
            await _bounded(dispatcher.stop(), "dispatcher.stop")
        if runtime is not None:
            await _bounded(runtime.stop(), "runtime.stop")
        cell.close()


async def _bounded(stopping: Awaitable[None], what: str) -> None:
    try:
        async with asyncio.timeout(30):
            await stopping
    except TimeoutError:
        print(f"{what} did not finish within 30s")


async def test_run_claimed_during_renewal_is_not_lost(
    lease_cell: tuple[Cell, Dispatcher], client: httpx.AsyncClient
) -> None:
    cell, dispatcher = lease_cell
    gates = {name: cell.shared / f"gate-{name}-{uuid.uuid4().hex[:6]}" for name in ("held", "new")}
    held_repo, new_repo = cell.repo("held"), cell.repo("new")
    try:
        held = await cell.create_run(
            client,
            held_repo,
            held_repo.commit({".forge/repo.toml": REPO_TOML, ".forge/project.toml": project_toml(gates["held"])}),
        )

        async def driven(run_id: str) -> bool:
            return run_id in dispatcher.drivers

        await _until(lambda: driven(held), "the first run is claimed")
        # Its step runs: its driver now only waits for the reply, holding no connection the row
        # lock below could block.
        step = ("first", "app", "wait")
        await cell.wait_run(client, held, until=lambda r: steps_of(r).get(step, {}).get("status") == "running")

        async with await psycopg.AsyncConnection.connect(cell.database_url) as locker:
            # Held until the second run is claimed: the renewal of the first run's lease waits on it.
            await locker.execute("SELECT 1 FROM pipeline.runs WHERE id = %s FOR UPDATE", (held,))
            renewal = asyncio.create_task(dispatcher.leases.renew_once())

            async def renewal_blocked() -> bool:
                # From another connection: a transaction sees one snapshot of pg_stat_activity.
                async with await psycopg.AsyncConnection.connect(cell.database_url, autocommit=True) as watcher:
                    cur = await watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) AND query LIKE %s",
                        (locker.info.backend_pid, "%WITH renewed%"),
                    )
                    row = await cur.fetchone()
                return bool(row and row[0])

            await _until(renewal_blocked, "the renewal query waits on the row lock")
            new = await cell.create_run(
                client,
                new_repo,
                new_repo.commit({".forge/repo.toml": REPO_TOML, ".forge/project.toml": project_toml(gates["new"])}),
            )
            await _until(lambda: driven(new), "the second run is claimed while the renewal is in flight")
            assert not renewal.done()
            await locker.rollback()
        await renewal

        # The renewal's answer did not cover the second run, so its driver was left alone.
        assert new in dispatcher.drivers, "the second run's driver stopped"
        assert dispatcher.drivers[new].cancelling() == 0
        assert dispatcher.drivers[held].cancelling() == 0
    finally:
        # Opened in any case, so a failing test leaves no step waiting.
        for gate in gates.values():
            gate.touch()
    for run_id in (new, held):
        run = await cell.wait_run(client, run_id, timeout=60)
        assert run["status"] == "success", run
        assert [p["status"] for p in run["phases"]] == ["success", "success"]
