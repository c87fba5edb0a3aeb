"""Fault: a worker ``kill -9``ed in the middle of a step, with the default settings.

The job's ack wait is 30 s (``FORGE_JOB_ACK_WAIT``; live workers heartbeat in-progress acks),
so JetStream hands the job to the other worker within about 30 s of the kill, not after the CI
job's 30-minute timeout; the step runs again there and the run ends as it should. The run is
created and watched through a gateway, as a client does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform
from tests.execution.conftest import Cell, pids_running, steps_of

pytestmark = pytest.mark.slow

REPO_TOML = '[phases.test]\ngroup = 1\ntimeout = "10m"\n[phases.build]\ngroup = 2\n'


@pytest.fixture
def default_cell(platform: Platform) -> Iterator[Cell]:
    # The cell's own settings only speed up polling; ack wait and job timeouts are the defaults.
    cell = Cell(platform, "kill9")
    try:
        cell.start_pipeline()
        cell.start_gateway()  # the run is created and watched through it
        yield cell
    finally:
        cell.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


async def test_a_killed_workers_job_runs_again_elsewhere_within_60s(
    default_cell: Cell, client: httpx.AsyncClient
) -> None:
    cell = default_cell
    workers = [cell.start_worker(), cell.start_worker()]
    cell.wait_workers(2)
    # Steps run sandboxed: the cell's shared directory is the one host path they may write.
    attempts = cell.shared / "attempts"
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "app/.forge/project.toml": f"""
name = "app"
[[phases.test.steps]]
name = "slow"
# The first attempt outlives the kill; the one after it is quick.
run = "if [ -e {attempts} ]; then echo attempt >> {attempts}; echo finished; else echo attempt >> {attempts}; sleep 600; fi"
[[phases.build.steps]]
name = "package"
run = "echo packaged"
""",
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    await cell.wait_run(
        client, run_id, until=lambda r: steps_of(r).get(("test", "app", "slow"), {}).get("status") == "running"
    )
    while not attempts.exists():
        await asyncio.sleep(0.05)
    # The worker running the step is an ancestor of the step's shell (the sandbox sits between).
    victim = _worker_above(pids_running(str(attempts))[0], workers)
    victim.kill()  # SIGKILL mid-step: no nak, no reply, no clean-up
    killed_at = time.monotonic()

    run = await cell.wait_run(client, run_id, timeout=90)
    assert run["status"] == "success", run
    assert time.monotonic() - killed_at < 60, "the job was not redelivered within 60 s of the kill"
    steps = steps_of(run)
    assert steps[("test", "app", "slow")]["status"] == "success"
    assert steps[("build", "app", "package")]["status"] == "success"
    assert attempts.read_text().count("attempt") == 2  # killed once, run again once
    log = (await client.get(steps[("test", "app", "slow")]["logs_url"])).text
    assert log == "finished\n"


def _worker_above(pid: int, workers: list[Process]) -> Process:
    by_pid = {w.popen.pid: w for w in workers}
    while pid > 1:
        if pid in by_pid:
            return by_pid[pid]
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().split(") ", 1)[1].split()[1])
    raise AssertionError("the step's shell runs under no worker of this cell")
