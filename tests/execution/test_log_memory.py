"""A step that prints 64 MiB: the worker's memory stays bounded, the log is complete.

The worker writes a step's log to S3 as the step prints (parts of ``FORGE_LOG_PART_SIZE``), so
its resident memory does not grow with the log. Measured on the worker process itself
(``/proc/<pid>/status``): after a warm-up run through the same code (a 16 MiB log, two parts),
the peak resident size (VmHWM, reset through ``clear_refs``) while a step prints 64 MiB stays
under the resident size before it plus three parts (24 MiB); holding the log would need 64. The run is driven through a gateway, as a client would; the log is read back through
the ``logs_url`` the gateway gives and compared byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import TERMINAL, Cell, steps_of

pytestmark = pytest.mark.slow

PART = 8 * 1024 * 1024
BIG = 64 * 1024 * 1024
LINE = b"forge log line 0123456789 abcdefghij\n"
REPO_TOML = '[phases.test]\ngroup = 1\ntimeout = "10m"\n'


def _project(name: str, size: int) -> str:
    return f"""
name = "{name}"
[[phases.test.steps]]
name = "print"
run = "yes '{LINE.decode().strip()}' | head -c {size}"
"""


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> bool:
    """Reset the process's peak resident size to its current one (Linux 4.0+, own or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.fixture
def lane(platform: Platform) -> Iterator[tuple[Cell, Process, Process]]:
    cell = Cell(platform, "logmem")
    try:
        pipeline = cell.start_pipeline()
        worker = cell.start_worker(env={"FORGE_LOG_PART_SIZE": str(PART)})
        gateway = platform.start_process("gateway", env={"FORGE_PIPELINE_URL": pipeline.url})
        cell.wait_workers(1)
        try:
            yield cell, worker, gateway
        finally:
            with contextlib.suppress(Exception):
                gateway.stop(timeout=5)
    finally:
        cell.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=120.0) as c:
        yield c


async def _run(client: httpx.AsyncClient, cell: Cell, gateway: str, project: str, size: int) -> dict[str, Any]:
    repo = cell.repo()
    sha = repo.commit({".forge/repo.toml": REPO_TOML, f"{project}/.forge/project.toml": _project(project, size)})
    created = await client.post(
        f"{gateway}/v1/runs",
        json={"repository": repo.repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
        headers=cell.headers(),
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    for _ in range(6000):
        got = await client.get(f"{gateway}/v1/runs/{run_id}", headers=cell.headers("viewer"))
        assert got.status_code == 200, got.text
        run: dict[str, Any] = got.json()
        if run["status"] in TERMINAL:
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end: {run}")


async def _log_digest(client: httpx.AsyncClient, url: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    async with client.stream("GET", url) as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_bytes():
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _expected(size: int) -> str:
    return hashlib.sha256((LINE * (size // len(LINE) + 1))[:size]).hexdigest()


async def test_a_64_mib_log_keeps_the_worker_memory_bounded(
    lane: tuple[Cell, Process, Process], client: httpx.AsyncClient
) -> None:
    cell, worker, gateway = lane
    pid = worker.popen.pid
    # Warm-up: the same code paths (a multipart log) once, so imports and pools are in place.
    warm = await _run(client, cell, gateway.url, "warm", 2 * PART)
    assert warm["status"] == "success", warm
    if not _reset_peak(pid):
        pytest.skip("cannot reset the worker's peak resident size (/proc/<pid>/clear_refs needs Linux 4.0+ and root)")
    before = _status(pid)["VmRSS"]

    run = await _run(client, cell, gateway.url, "loud", BIG)

    peak = _status(pid)["VmHWM"]
    assert run["status"] == "success", run
    step = steps_of(run)[("test", "loud", "print")]
    assert await _log_digest(client, step["logs_url"]) == (BIG, _expected(BIG))
    grown = peak - before
    assert grown < 3 * PART, f"the worker's resident memory grew by {grown / 2**20:.1f} MiB for a 64 MiB log"
