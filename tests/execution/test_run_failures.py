"""Timeouts, cancellation, invalid configuration and large results, on the shared cell."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from forge_common.s3 import S3

from .conftest import Cell, pids_running, steps_of

ONE_PHASE = """
forge_version = "1"
[phases.test]
group = 1
{extra}
"""


def _unique_sleep() -> str:
    """A sleep duration no other process uses, to find the step's processes by command line."""
    return f"600.{uuid.uuid4().int % 10**9:09d}"


def project(name: str, steps: str) -> str:
    return f'name = "{name}"\n{steps}'


async def test_step_timeout_fails_the_run(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": ONE_PHASE.format(extra=""),
            "app/.forge/project.toml": project(
                "app",
                '[[phases.test.steps]]\nname = "slow"\nrun = "echo start; sleep 30"\ntimeout = "1s"\n'
                '[[phases.test.steps]]\nname = "after"\nrun = "echo never"\n',
            ),
        }
    )
    started = time.monotonic()
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=30)
    assert time.monotonic() - started < 15
    assert run["status"] == "failed"
    steps = steps_of(run)
    slow = steps[("test", "app", "slow")]
    assert slow["status"] == "failed"
    assert slow["exit_code"] == 124
    assert steps[("test", "app", "after")]["status"] == "skipped"
    log = (await client.get(slow["logs_url"])).text
    assert log.startswith("start\n")
    assert "timed out after 1s" in log
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    assert failed["data"]["failed_phase"] == "test"
    assert "timed out after 1s" in failed["data"]["error_message"]


async def test_phase_timeout_overrides_ci_default(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo()
    marker = _unique_sleep()
    sha = repo.commit(
        {
            ".forge/repo.toml": ONE_PHASE.format(extra='timeout = "2s"'),
            "app/.forge/project.toml": project(
                "app", f'[[phases.test.steps]]\nname = "hang"\nrun = "sleep {marker}"\n'
            ),
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=30)
    assert run["status"] == "failed"
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    assert "timed out after 2s" in failed["data"]["error_message"]
    assert failed["data"]["failed_phase"] == "test"
    # The orphaned step is stopped too (the dispatcher tells the workers the run ended).
    deadline = time.monotonic() + 5
    while pids_running(marker) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert pids_running(marker) == []


async def test_cancel_kills_the_running_step(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo()
    marker = _unique_sleep()
    sha = repo.commit(
        {
            ".forge/repo.toml": ONE_PHASE.format(extra=""),
            # A child process in the background and one in the foreground: the whole group goes.
            "app/.forge/project.toml": project(
                "app", f'[[phases.test.steps]]\nname = "forever"\nrun = "sleep {marker} & sleep {marker}"\n'
            ),
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    await cell.wait_run(client, run_id, until=lambda r: any(s["status"] == "running" for s in steps_of(r).values()))
    deadline = time.monotonic() + 5
    while len(pids_running(marker)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(pids_running(marker)) >= 2
    resp = await client.delete(f"{cell.url}/v1/runs/{run_id}", headers=cell.headers())
    assert resp.status_code == 204
    cancelled_at = time.monotonic()
    while pids_running(marker) and time.monotonic() - cancelled_at < 5:
        await asyncio.sleep(0.05)
    assert pids_running(marker) == [], "step processes survived the cancellation"
    run = await cell.get_run(client, run_id)
    assert run["status"] == "cancelled"
    step = steps_of(run)[("test", "app", "forever")]
    assert step["status"] in ("cancelled", "failed")


async def test_invalid_configuration_names_file_and_field(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": ONE_PHASE.format(extra=""),
            "services/api/.forge/project.toml": project(
                "api", '[[phases.test.steps]]\nname = "unit"\naction = "docker"\nrun = "true"\n'
            ),
            "web/.forge/project.toml": project("web", '[[phases.deploy.steps]]\nname = "x"\nrun = "true"\n'),
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=30)
    assert run["status"] == "failed"
    assert run["phases"] == []
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    message = failed["data"]["error_message"]
    assert failed["data"]["failed_phase"] == "discovery"
    assert (
        'services/api/.forge/project.toml: phases.test.steps[0].action: must be "shell" or "earthly", got \'docker\''
        in message
    )
    assert "web/.forge/project.toml: phases.deploy: phase 'deploy' is not declared in .forge/repo.toml" in message
    # The same message is on the run itself, for whoever reads it through the API.
    assert run["error"] == message
    assert run["failed_phase"] == "discovery"


async def test_missing_repository_configuration(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo()
    sha = repo.commit({"README.md": "no forge here\n"})
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=30)
    assert run["status"] == "failed"
    failed = await cell.wait_event("pipeline.run.failed", run_id)
    assert ".forge/repo.toml: file not found" in failed["data"]["error_message"]


async def test_result_over_1mb_travels_through_s3(cell: Cell, client: httpx.AsyncClient) -> None:
    """20 steps with 60 kB commands: the discovery result (~1.2 MB) goes through S3."""
    repo = cell.repo()
    filler = "x" * 60_000
    steps = "".join(f'[[phases.test.steps]]\nname = "s{i:02d}"\nrun = "true # {filler}"\n' for i in range(20))
    sha = repo.commit(
        {".forge/repo.toml": ONE_PHASE.format(extra=""), "big/.forge/project.toml": project("big", steps)}
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=60)
    assert run["status"] == "success", run
    assert len(steps_of(run)) == 20
    s3 = S3(cell.platform.s3_url, cell.platform.s3_bucket, "forge", "forge-secret", "us-east-1")
    async with s3.client() as c:
        listing = await c.list_objects_v2(Bucket=s3.bucket, Prefix=f"pipeline-runs/{run_id}/results/discovery/")
    objects = listing.get("Contents", [])
    assert len(objects) == 1
    assert objects[0]["Key"].endswith(".json")
    assert objects[0]["Size"] > 1024 * 1024


async def test_earthly_step_without_earthly_fails_clearly(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo()
    sha = repo.commit(
        {
            ".forge/repo.toml": ONE_PHASE.format(extra=""),
            "app/.forge/project.toml": project(
                "app", '[[phases.test.steps]]\nname = "image"\naction = "earthly"\ntarget = "+image"\n'
            ),
        }
    )
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=30)
    assert run["status"] == "failed"
    step = steps_of(run)[("test", "app", "image")]
    assert step["status"] == "failed"
    assert step["exit_code"] == 127
    assert "earthly is not installed on this worker (target +image)" in (await client.get(step["logs_url"])).text
