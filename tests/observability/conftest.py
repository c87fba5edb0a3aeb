"""A platform of its own for the observability tests: every process exports its spans over
OTLP/HTTP to a local receiver (the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``), the worker serves
``/metrics`` and fetches from local git repositories.

Its own platform (not the session's) because the OTLP settings must reach every process,
gateway and worker included, from the start; it is torn down after this package's tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge_dev.stack import free_port, wait_http
from forge_dev.testing import Platform, session_platform

from .otlp import OtlpReceiver

DEVELOPER = "dana.dev@acme.io"
APPROVER = "alex.approver@acme.io"

REPO_TOML = """
forge_version = "1"
[phases.test]
group = 1
[phases.build]
group = 2
"""

PROJECT_TOML = """
name = "api"
[[phases.test.steps]]
name = "unit"
action = "shell"
run = "echo tests ok, trace $TRACEPARENT"
[[phases.build.steps]]
name = "package"
action = "shell"
run = "echo built"
[release]
on = [{ branch = "main" }]
"""


@dataclass
class Observed:
    platform: Platform
    receiver: OtlpReceiver
    repos: Path
    worker_metrics_url: str
    # Steps run sandboxed and see nothing of the host but this directory (read-only): gates.
    gates: Path

    def metrics_urls(self) -> dict[str, str]:
        urls = {"gateway": f"{self.platform.gateway_url}/metrics", "worker": self.worker_metrics_url}
        for name in ("pipeline", "release", "deployment", "approval"):
            urls[name] = f"{self.platform.service_url(name)}/metrics"
        return urls

    def push(self, repository: str, project_toml: str = PROJECT_TOML) -> str:
        """A bare repository with one commit on main holding one project (by default one that
        is released from main)."""
        bare = self.repos / f"{repository}.git"
        work = self.repos / "work" / repository
        work.mkdir(parents=True)
        _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=self.repos)
        _git("init", "-q", "-b", "main", cwd=work)
        for path, content in {".forge/repo.toml": REPO_TOML, "api/.forge/project.toml": project_toml}.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(content)
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", "first", cwd=work)
        _git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work).strip()

    async def run_pipeline(
        self,
        client: httpx.AsyncClient,
        headers: dict[str, str] | None = None,
        project_toml: str = PROJECT_TOML,
        expect: str = "success",
    ) -> dict[str, Any]:
        """Push a repository, create a run through the gateway, wait for it to finish."""
        repository = f"obs{uuid.uuid4().hex[:8]}/shop"
        run_id = await self.start_run(client, repository, self.push(repository, project_toml), headers)
        return {"run": await self.wait_run(client, run_id, expect), "repository": repository}

    async def start_run(
        self, client: httpx.AsyncClient, repository: str, sha: str, headers: dict[str, str] | None = None
    ) -> str:
        resp = await client.post(
            "/v1/runs",
            json={"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "manual"},
            headers={**self.platform.headers(DEVELOPER, "developer"), **(headers or {})},
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    async def wait_run(self, client: httpx.AsyncClient, run_id: str, expect: str = "success") -> dict[str, Any]:
        viewer = self.platform.headers(DEVELOPER, "viewer")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:
            run = (await client.get(f"/v1/runs/{run_id}", headers=viewer)).json()
            if run["status"] in ("success", "failed", "cancelled"):
                break
            assert loop.time() < deadline, f"run {run_id} did not finish: {run}\n{self.logs()}"
            await asyncio.sleep(0.1)
        assert run["status"] == expect, f"{run}\n{self.logs()}"
        return dict(run)

    def logs(self) -> str:
        return "\n".join(
            f"----- {name} -----\n{self.platform.logs(name)[-4000:]}" for name in ("pipeline", "worker", "release")
        )


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Dana Dev",
        "GIT_AUTHOR_EMAIL": DEVELOPER,
        "GIT_COMMITTER_NAME": "Dana Dev",
        "GIT_COMMITTER_EMAIL": DEVELOPER,
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="package")
def observed() -> Iterator[Observed]:
    receiver = OtlpReceiver().start()
    repos = Path(tempfile.mkdtemp(prefix="forge-obs-repos-"))
    gates = Path(tempfile.mkdtemp(prefix="forge-obs-gates-"))
    os.chmod(gates, 0o755)  # noqa: S103 - the step user (nobody) reads the gates
    worker_port = free_port()
    env = {
        # The standard OpenTelemetry settings, nothing Forge-specific: every process exports.
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export promptly instead of every 5 s
        "FORGE_GIT_URL_TEMPLATE": repos.as_uri() + "/{repository}.git",
        "FORGE_WORKER_HTTP_PORT": str(worker_port),
        "FORGE_STEP_READONLY_PATHS": str(gates),
        # Workers pull artifact jobs by default; this one leaves them queued, so an artifact job
        # published by a test is consumer lag (forge_jobs_pending{job_type="artifact"}).
        "FORGE_WORKER_TYPES": "discovery,ci,release",
    }
    try:
        with session_platform(env=env, workers=1) as platform:
            # The worker's listener answers once it is connected and pulling.
            wait_http(f"http://127.0.0.1:{worker_port}/readyz", 60, platform.stack.workers[0].popen, "worker")
            yield Observed(platform, receiver, repos, f"http://127.0.0.1:{worker_port}/metrics", gates)
    finally:
        receiver.stop()
        shutil.rmtree(repos, ignore_errors=True)
        shutil.rmtree(gates, ignore_errors=True)


@pytest.fixture
async def gateway(observed: Observed) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=observed.platform.gateway_url, timeout=60.0) as client:
        yield client
