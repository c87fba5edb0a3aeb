"""Crashes: a worker killed mid-job, a job that never succeeds, a pipeline replica killed."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from forge_common import jobs
from forge_common.nats import Names
from forge_dev.stack import Process, free_port, wait_http
from forge_dev.testing import Platform
from forge_worker.sandbox import sweep_stale

from .conftest import Cell, steps_of

REPO_TOML = """
forge_version = "1"
[phases.test]
group = 1
timeout = "60s"
[phases.build]
group = 2
"""


@pytest.fixture
def crash_cell(platform: Platform, request: pytest.FixtureRequest) -> Iterator[Cell]:
    # A short ack wait: a crashed worker's job comes back after 2s (heartbeats keep live ones).
    c = Cell(platform, "crash", env={"FORGE_JOB_ACK_WAIT": "2s", "FORGE_DISPATCHER_CHECK_INTERVAL": "0.5s"})
    try:
        c.start_pipeline()
        yield c
    finally:
        # A failed test shows its pipeline's and workers' logs (the cell's directory goes).
        report = getattr(request.node, "rep_call", None)
        c.close(dump_logs=report is not None and report.failed)


async def test_worker_killed_mid_job_is_redelivered(crash_cell: Cell, client: httpx.AsyncClient) -> None:
    cell = crash_cell
    first = cell.start_worker()
    cell.wait_workers(1)
    counter = cell.shared / "attempts"
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "app/.forge/project.toml": f"""
name = "app"
[[phases.test.steps]]
name = "slow"
run = "echo attempt >> {counter}; sleep 2; echo finished"
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
    deadline = time.monotonic() + 5
    while not counter.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    first.kill()  # SIGKILL: no chance to nak, reply or clean up
    cell.start_worker()
    run = await cell.wait_run(client, run_id, timeout=40)
    assert run["status"] == "success", run
    steps = steps_of(run)
    assert steps[("test", "app", "slow")]["status"] == "success"
    assert steps[("build", "app", "package")]["status"] == "success"
    # Killed once, redelivered (at least) once; a duplicate delivery never runs in parallel.
    assert counter.read_text().count("attempt") >= 2
    log = (await client.get(steps[("test", "app", "slow")]["logs_url"])).text
    assert log == "finished\n"


async def test_job_failing_every_delivery_is_dead_lettered(crash_cell: Cell, client: httpx.AsyncClient) -> None:
    cell = crash_cell
    # This worker cannot reach the pipeline service: every delivery fails before running.
    dead_port = free_port()
    cell.start_worker(
        env={
            "FORGE_PIPELINE_URL": f"http://127.0.0.1:{dead_port}",
            "FORGE_WORKER_TYPES": "ci",
            "FORGE_STATUS_ATTEMPTS": "1",
        }
    )
    helper = cell.start_worker(env={"FORGE_WORKER_TYPES": "discovery"})
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "app/.forge/project.toml": 'name = "app"\n[[phases.test.steps]]\nname = "unit"\nrun = "true"\n',
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=40)
    assert run["status"] == "failed", run
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    message = failed["data"]["error_message"]
    assert failed["data"]["failed_phase"] == "test"
    assert "failed on all 3 deliveries" in message
    # Viewers read this: the internal service is named, its address is not (issue 12).
    assert "on the pipeline service failed" in message
    assert f"127.0.0.1:{dead_port}" not in message
    # The job itself waits on the dead-letter stream with the reason.
    names = Names(cell.prefix)
    nc = await nats.connect(cell.platform.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            names.subject(f"pipeline.deadletter.ci.{run_id}"),
            stream=names.stream(jobs.DEAD_LETTER_STREAM),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0),
        )
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.headers is not None
        assert "failed on all 3 deliveries" in msg.headers[jobs.HDR_DEAD_REASON]
        assert msg.headers[jobs.HDR_DELIVERIES] == "3"
        assert msgspec.json.decode(msg.data)["run_id"] == run_id
    finally:
        await nc.close()
    helper.stop()


async def test_replicas_share_runs_and_take_over(platform: Platform, client: httpx.AsyncClient) -> None:
    # At most 3 runs per replica: with 6 runs both replicas must drive some.
    cell = Cell(
        platform,
        "repl",
        env={
            "FORGE_DISPATCHER_LEASE_TTL": "2s",
            "FORGE_DISPATCHER_CHECK_INTERVAL": "0.5s",
            "FORGE_DISPATCHER_MAX_RUNS": "3",
        },
    )
    try:
        a = cell.start_pipeline()
        b = cell.start_pipeline()
        cell.start_worker()
        cell.start_worker()
        cell.wait_workers(2)
        marks = cell.shared_dir("marks")
        runs: list[str] = []
        for i in range(6):
            repo = cell.repo(f"r{i}")
            sha = repo.commit(
                {
                    ".forge/repo.toml": REPO_TOML,
                    "app/.forge/project.toml": f"""
name = "app"
[[phases.test.steps]]
name = "unit"
run = "echo x >> {marks}/$FORGE_TASK_ID; sleep 2"
[[phases.build.steps]]
name = "package"
run = "echo x >> {marks}/$FORGE_TASK_ID; sleep 2"
""",
                }
            )
            runs.append(await cell.create_run(client, repo, sha))
        # Both replicas drive runs, each run by exactly one of them.
        owners = await _owners(cell, runs)
        assert set(owners.values()) <= {a.popen.pid, b.popen.pid}
        b.kill()  # SIGKILL one replica while its runs are mid-flight
        orphaned = await _active(cell, [r for r, pid in owners.items() if pid == b.popen.pid])
        assert orphaned, "the killed replica had no run in flight; nothing was taken over"
        for run_id in runs:
            run = await cell.wait_run(client, run_id, timeout=60)
            assert run["status"] == "success", run
        # No task ran twice, none was lost: one mark per task.
        files = list(marks.iterdir())
        assert len(files) == 12
        assert all(f.read_text() == "x\n" for f in files)
        assert len(set(owners.values())) == 2, f"expected both replicas to drive runs: {owners}"
    finally:
        cell.close()


async def _owners(cell: Cell, runs: list[str], timeout: float = 20.0) -> dict[str, int]:
    """run id -> pid of the first replica seen holding its lease."""
    import psycopg

    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(cell.database_url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT id::text, lease_owner FROM pipeline.runs WHERE id = ANY(%s::uuid[])", (runs,)
            )
            for run_id, owner in await cur.fetchall():
                if owner and run_id not in seen:
                    seen[run_id] = int(str(owner).split(":")[1])
            if len(seen) == len(runs):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"runs never leased: {set(runs) - set(seen)}")
            await asyncio.sleep(0.02)


async def _active(cell: Cell, runs: list[str]) -> list[str]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(cell.database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id::text FROM pipeline.runs WHERE id = ANY(%s::uuid[]) AND status IN ('pending', 'running')",
            (runs,),
        )
        return [r[0] for r in await cur.fetchall()]


async def test_job_never_acknowledged_is_dead_lettered_by_the_dispatcher(
    crash_cell: Cell, client: httpx.AsyncClient
) -> None:
    """Every delivery kills the worker running it (SIGKILL to the step's parent): no worker
    ever answers, JetStream gives up after 3 deliveries and the dispatcher dead-letters it."""
    cell = crash_cell
    for _ in range(3):
        # Unsandboxed: the step's parent must be the worker (a sandboxed step cannot reach it).
        cell.start_worker(env={"FORGE_STEP_SANDBOX": "none"})
    cell.wait_workers(3)
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML,
            "app/.forge/project.toml": 'name = "app"\n[[phases.test.steps]]\nname = "crash"\nrun = "kill -9 $PPID"\n',
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=45)
    assert run["status"] == "failed", run
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    assert failed["data"]["failed_phase"] == "test"
    assert "not acknowledged after 3 deliveries" in failed["data"]["error_message"]
    assert all(w.popen.poll() is not None for w in cell.workers), "each delivery should have killed a worker"
    names = Names(cell.prefix)
    nc = await nats.connect(cell.platform.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            names.subject(f"pipeline.deadletter.ci.{run_id}"),
            stream=names.stream(jobs.DEAD_LETTER_STREAM),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0),
        )
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.headers is not None
        assert "not acknowledged after 3 deliveries" in msg.headers[jobs.HDR_DEAD_REASON]
    finally:
        await nc.close()


def _job_dirs(work: Path) -> set[str]:
    return {p.name for p in work.iterdir() if p.is_dir() and p.name.startswith("job-")} if work.exists() else set()


def _start_ready_worker(cell: Cell, work: Path) -> Process:
    """A worker on ``work``, once it serves /healthz: its start-up sweep is behind it."""
    port = free_port()
    proc = cell.start_worker({"FORGE_STEP_WORK_DIR": str(work), "FORGE_WORKER_HTTP_PORT": str(port)})
    wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc.popen, proc.name)
    return proc


async def test_a_killed_workers_workspace_is_removed_by_the_next_worker_a_live_one_is_kept(
    crash_cell: Cell, client: httpx.AsyncClient
) -> None:
    """Workers sharing a step work directory: one starting while another runs a job keeps that
    job's workspace; once that worker is killed mid-job, the next worker to start removes it."""
    cell = crash_cell
    shared_parent = Path(tempfile.mkdtemp(prefix="forge-exec-steps-"))
    os.chmod(shared_parent, 0o711)  # noqa: S103 - the step user passes through to its workspace
    work = shared_parent / "steps"
    started = cell.shared / "started"
    try:
        first = _start_ready_worker(cell, work)
        repo = cell.repo()
        sha = repo.commit(
            {
                ".forge/repo.toml": REPO_TOML,
                "app/.forge/project.toml": f"""
name = "app"
[[phases.test.steps]]
name = "long"
run = "echo built > output.txt; echo $$ >> {started}; sleep 600"
""",
            }
        )
        run_id = await cell.create_run(client, repo, sha)
        await cell.wait_run(
            client, run_id, until=lambda r: steps_of(r).get(("test", "app", "long"), {}).get("status") == "running"
        )
        deadline = time.monotonic() + 10
        while not started.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # The job's own directory (the worker's warm sandboxes have theirs beside it).
        live = {name for name in _job_dirs(work) if (work / name / "workspace" / "app" / "output.txt").exists()}
        assert len(live) == 1, _job_dirs(work)

        _start_ready_worker(cell, work)  # sweeps at start, while the first worker's job runs
        assert live <= _job_dirs(work), "a live job's workspace was removed"

        first.kill()  # SIGKILL: its workspace stays behind
        assert live <= _job_dirs(work)
        _start_ready_worker(cell, work)
        assert not live & _job_dirs(work), "the killed worker's workspace is still there"
        assert not [p for p in work.iterdir() if p.name.startswith(tuple(live))]  # nor its lock file
        await client.delete(f"{cell.url}/v1/runs/{run_id}", headers=cell.headers("developer"))
    finally:
        for proc in cell.workers:
            proc.stop(timeout=5)
        sweep_stale(work)  # what the stopped workers left (their overlays unmounted)
        shutil.rmtree(shared_parent, ignore_errors=True)
