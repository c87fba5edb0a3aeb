"""Security tests: hostile steps against the real platform (a pipeline instance and workers of
their own, on the session's Postgres, NATS and S3; repositories served from local bare repos).

The workers run as they do in production: sandboxed (bwrap or unshare, whichever works here).
Without a working sandbox the tests skip, saying why.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge_dev.testing import Platform
from forge_worker.sandbox import Sandbox, SandboxUnavailable
from tests.execution.conftest import Cell, client  # noqa: F401 - the client fixture, for these tests

__all__ = ["WEBHOOK_SECRET", "Cell", "fetch_log"]

WEBHOOK_SECRET = "security-cell-webhook-secret"


def _sandbox_problem() -> str | None:
    async def probe() -> str | None:
        work = Path("/tmp/forge-security-probe")
        try:
            await Sandbox.create("auto", work_dir=work)
        except SandboxUnavailable as exc:
            return str(exc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return None

    return asyncio.run(probe())


@pytest.fixture(scope="session")
def security_cell(platform: Platform) -> Iterator[Cell]:
    """A pipeline that builds only this cell's repositories, and two sandboxed workers."""
    problem = _sandbox_problem()
    if problem is not None:
        pytest.skip(f"no step sandbox on this machine: {problem}")
    cell = Cell(platform, "sec")
    cell.env["FORGE_REPOSITORIES"] = f"exec-{cell.tag}/*"
    cell.env["FORGE_GITHUB_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    try:
        cell.start_pipeline()
        cell.start_worker()
        cell.start_worker()
        cell.wait_workers(2)
        yield cell
    finally:
        cell.close()


@pytest.fixture(scope="session")
def step_scope_cell(platform: Platform) -> Iterator[Cell]:
    """Like ``security_cell`` with the other choices: a new sandbox for every step
    (FORGE_STEP_SANDBOX_SCOPE=step) and a copy of the checkout per task (FORGE_STEP_WORKSPACE=copy,
    what workers not running as root get)."""
    problem = _sandbox_problem()
    if problem is not None:
        pytest.skip(f"no step sandbox on this machine: {problem}")
    cell = Cell(platform, "secstep")
    cell.env["FORGE_REPOSITORIES"] = f"exec-{cell.tag}/*"
    cell.env["FORGE_STEP_SANDBOX_SCOPE"] = "step"
    cell.env["FORGE_STEP_WORKSPACE"] = "copy"
    try:
        cell.start_pipeline()
        cell.start_worker()
        cell.wait_workers(1)
        yield cell
    finally:
        cell.close()


@pytest.fixture(params=["task", "step"])
def scoped_cell(request: pytest.FixtureRequest) -> Cell:
    """Both ways of sandboxing steps: one sandbox per task (the default; an overlay workspace
    when the tests run as root), one per step (with a copy of the checkout)."""
    cell: Cell = request.getfixturevalue("security_cell" if request.param == "task" else "step_scope_cell")
    return cell


async def fetch_log(http: httpx.AsyncClient, step: dict[str, object]) -> str:
    url = step.get("logs_url")
    assert isinstance(url, str), f"step {step.get('name')} has no log"
    resp = await http.get(url)
    assert resp.status_code == 200, resp.text
    return resp.text
