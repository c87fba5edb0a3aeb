"""Replies only from workers: a forged reply to a task's inbox changes nothing.

Each run has a task whose only step holds until the test lets it go (it connects to a TCP
server of the test, so the test knows the task is running and its dispatcher waits for the
reply). Meanwhile forged replies arrive at the task's inbox: from the read-only events identity
(refused by the server), and from an identity that may publish replies but does not hold the
job (no dispatch attempt id, or a guessed one), which the dispatcher drops and counts. The task
then ends on its own merits.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from typing import Any

import httpx
import msgspec
import nats

from forge_common import jobs
from forge_common.nats import Names
from tests.execution.conftest import GitRepo

from .conftest import SecurePlatform

REPO_TOML = """
forge_version = "1"
[phases.test]
group = 1
timeout = "60s"
"""


def _project(port: int, exit_code: int) -> str:
    # Holds until the test writes a line to the connection, then exits with exit_code.
    return f"""
name = "app"
[[phases.test.steps]]
name = "held"
run = "exec 3<>/dev/tcp/127.0.0.1/{port}; read -r line <&3; echo released; exit {exit_code}"
timeout = "60s"
"""


class Gate:
    """A TCP server the held step connects to; ``release`` lets the step finish."""

    def __init__(self) -> None:
        self.connected: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _on_connect(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if not self.connected.done():
            self.connected.set_result(writer)

    async def release(self) -> None:
        writer = await asyncio.wait_for(self.connected, 5)
        writer.write(b"go\n")
        await writer.drain()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _rejected(client: httpx.AsyncClient, pipeline_url: str) -> float:
    text = (await client.get(f"{pipeline_url}/metrics")).text
    match = re.search(r'^forge_pipeline_job_replies_rejected_total\{reason="mismatch"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def _wait_rejected(client: httpx.AsyncClient, pipeline_url: str, at_least: float) -> None:
    deadline = time.monotonic() + 15
    while (count := await _rejected(client, pipeline_url)) < at_least:
        assert time.monotonic() < deadline, f"the dispatcher dropped {count} forged replies, expected {at_least}"
        await asyncio.sleep(0.05)


async def _wait_run(client: httpx.AsyncClient, secure: SecurePlatform, run_id: str) -> dict[str, Any]:
    platform = secure.platform
    deadline = time.monotonic() + 60
    while True:
        resp = await client.get(
            f"{platform.gateway_url}/v1/runs/{run_id}", headers=platform.headers("dev@forge.local", "viewer")
        )
        run: dict[str, Any] = resp.json()
        if run["status"] in ("success", "failed", "cancelled"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {run}"
        await asyncio.sleep(0.1)


async def _held_run(client: httpx.AsyncClient, secure: SecurePlatform, gate: Gate, exit_code: int) -> tuple[str, str]:
    """A run whose one task is running its held step: (run id, task id)."""
    platform = secure.platform
    repo = GitRepo(secure.repos, f"forged/app-{uuid.uuid4().hex[:6]}")
    sha = repo.commit({".forge/repo.toml": REPO_TOML, ".forge/project.toml": _project(gate.port, exit_code)})
    resp = await client.post(
        f"{platform.gateway_url}/v1/runs",
        json={"repository": repo.repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
        headers=platform.headers("dev@forge.local", "developer"),
    )
    assert resp.status_code == 201, resp.text
    run_id = str(resp.json()["id"])
    await asyncio.wait_for(asyncio.shield(gate.connected), 60)
    resp = await client.get(
        f"{platform.gateway_url}/v1/runs/{run_id}", headers=platform.headers("dev@forge.local", "viewer")
    )
    task_id = str(resp.json()["phases"][0]["tasks"][0]["id"])
    return run_id, task_id


async def _forge(secure: SecurePlatform, run_id: str, task_id: str, status: str) -> int:
    """Forged replies for the task; how many reached the dispatcher's inbox (the rest were
    refused by the server)."""
    platform = secure.platform
    inbox = jobs.inbox_subject(Names(platform.nats_prefix), run_id, task_id)
    refused: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        await refused.put(str(exc))

    # The read-only events identity may not publish to a job inbox at all.
    events = await nats.connect(platform.nats_url_for("events"), error_cb=on_error)
    try:
        await events.publish(inbox, msgspec.json.encode({"status": status}))
        assert "permissions violation for publish" in (await asyncio.wait_for(refused.get(), 10)).lower()
    finally:
        await events.close()
    # An identity that may publish replies but never saw the job: no attempt id, or a guess.
    replier = await nats.connect(platform.nats_url_for("worker"))
    try:
        forged = [
            {"status": status},
            {"status": status, "job_id": task_id},
            {"status": status, "job_id": task_id, "attempt": uuid.uuid4().hex},
        ]
        for body in forged:
            await replier.publish(inbox, msgspec.json.encode(body))
        await replier.flush()
    finally:
        await replier.close()
    return len(forged)


def _task(run: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = run["phases"][0]["tasks"][0]
    return task


async def test_forged_success_does_not_pass_a_failing_task(secure: SecurePlatform) -> None:
    gate = Gate()
    await gate.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            pipeline_url = secure.platform.service_url("pipeline")
            before = await _rejected(client, pipeline_url)
            run_id, task_id = await _held_run(client, secure, gate, exit_code=3)
            delivered = await _forge(secure, run_id, task_id, "success")
            await _wait_rejected(client, pipeline_url, before + delivered)
            resp = await client.get(
                f"{secure.platform.gateway_url}/v1/runs/{run_id}",
                headers=secure.platform.headers("dev@forge.local", "viewer"),
            )
            assert resp.json()["status"] == "running"
            await gate.release()
            run = await _wait_run(client, secure, run_id)
    finally:
        await gate.close()
    assert run["status"] == "failed"
    assert _task(run)["status"] == "failed"
    assert _task(run)["steps"][0]["exit_code"] == 3
    assert secure.refused_forge_processes() == []


async def test_forged_failure_does_not_fail_a_passing_task(secure: SecurePlatform) -> None:
    gate = Gate()
    await gate.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            pipeline_url = secure.platform.service_url("pipeline")
            before = await _rejected(client, pipeline_url)
            run_id, task_id = await _held_run(client, secure, gate, exit_code=0)
            delivered = await _forge(secure, run_id, task_id, "failed")
            await _wait_rejected(client, pipeline_url, before + delivered)
            await gate.release()
            run = await _wait_run(client, secure, run_id)
    finally:
        await gate.close()
    assert run["status"] == "success"
    assert _task(run)["status"] == "success"
    assert secure.refused_forge_processes() == []
