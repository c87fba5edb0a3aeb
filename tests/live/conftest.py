"""Live status, logs and list filters, through a gateway, on a real platform.

A lane is a pipeline instance and a worker of this package's own (own database and NATS prefix,
fetching from local git repositories), a release service for the worker's release jobs, and a
gateway in front of the pipeline instance. Steps of the test repositories can wait for a file the
test creates (``wait_for``): the test decides when a step finishes, so nothing here sleeps or
races a clock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

DEVELOPER = "lee.live@acme.io"
VIEWER = "val.viewer@acme.io"
TERMINAL = ("success", "failed", "cancelled")


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Lee Live",
        "GIT_AUTHOR_EMAIL": DEVELOPER,
        "GIT_COMMITTER_NAME": "Lee Live",
        "GIT_COMMITTER_EMAIL": DEVELOPER,
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def project_files(steps: dict[str, str], phases: tuple[str, ...] = ("test",)) -> dict[str, str]:
    """A repository with one project ``api`` whose phase(s) run ``steps`` (name -> shell)."""
    repo_toml = 'forge_version = "1"\n' + "".join(
        f"[phases.{phase}]\ngroup = {i + 1}\n" for i, phase in enumerate(phases)
    )
    project = 'name = "api"\n'
    for phase in phases:
        for name, command in steps.items():
            project += f'[[phases.{phase}.steps]]\nname = "{name}"\naction = "shell"\nrun = """{command}"""\n'
    return {".forge/repo.toml": repo_toml, "api/.forge/project.toml": project, "api/app.txt": "v1\n"}


class Lane:
    def __init__(self, platform: Platform, root: Path) -> None:
        self.platform = platform
        self.root = root
        self.tag = uuid.uuid4().hex[:8]
        self.repos = root / "repos"
        # Steps run sandboxed and see nothing of the host but this directory, read-only
        # (FORGE_STEP_READONLY_PATHS); outside the 0700 pytest directory, so the step user can reach it.
        self.signals = Path(tempfile.mkdtemp(prefix=f"forge-live-signals-{self.tag}-"))
        os.chmod(self.signals, 0o755)  # noqa: S103 - the step user (nobody) reads the signals
        self.database = f"forge_live_{self.tag}"
        self.admin = platform.stack.infra.admin_database_url
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        from forge_dev.stack import _with_database

        self.env = {
            "FORGE_DATABASE_URL": _with_database(self.admin, self.database),
            "FORGE_NATS_PREFIX": f"{platform.nats_prefix}l{self.tag}",
            "FORGE_GIT_URL_TEMPLATE": self.repos.as_uri() + "/{repository}.git",
            "FORGE_GIT_CACHE_DIR": str(root / "git-cache"),
            "FORGE_LOG_FLUSH_INTERVAL": "0.2s",
            "FORGE_STEP_READONLY_PATHS": str(self.signals),
            "FORGE_LOG_FOLLOW_INTERVAL": "0.2s",
            "FORGE_DB_POOL_MIN": "1",
            "FORGE_DB_POOL_MAX": "6",
        }
        self.processes: list[Process] = []
        self.pipeline_url = ""
        self.gateway_url = ""

    def start(self) -> None:
        pipeline = self.platform.start_process("pipeline", env=self.env)
        self.processes.append(pipeline)
        self.pipeline_url = pipeline.url or ""
        release = self.platform.start_process("release", env={"FORGE_PIPELINE_URL": self.pipeline_url})
        self.processes.append(release)
        self.processes.append(
            self.platform.start_process(
                "worker",
                env={**self.env, "FORGE_PIPELINE_URL": self.pipeline_url, "FORGE_RELEASE_URL": release.url or ""},
            )
        )
        self.gateway_url = self.gateway()

    def gateway(self, env: dict[str, str] | None = None) -> str:
        """A gateway in front of this lane's pipeline instance (another one with ``env``)."""
        proc = self.platform.start_process("gateway", env={"FORGE_PIPELINE_URL": self.pipeline_url, **(env or {})})
        self.processes.append(proc)
        return proc.url or ""

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        with contextlib.suppress(Exception), psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.signals, ignore_errors=True)

    # --- repositories, runs, signals --------------------------------------------------------------

    def push(self, files: dict[str, str], name: str | None = None, branch: str = "main") -> tuple[str, str]:
        """A new repository with one commit; ``(repository, sha)``."""
        repository = f"live-{self.tag}/{name or uuid.uuid4().hex[:8]}"
        bare = self.repos / f"{repository}.git"
        work = self.root / "work" / repository
        bare.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True)
        _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=self.root)
        _git("init", "-q", "-b", "main", cwd=work)
        for path, content in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(content)
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", "first", cwd=work)
        _git("push", "-q", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)
        return repository, _git("rev-parse", "HEAD", cwd=work).strip()

    def wait_for(self, name: str) -> str:
        """A shell fragment that blocks until the test calls :meth:`signal` with ``name``."""
        return f"while [ ! -e {self.signals / name} ]; do sleep 0.05; done"

    def signal(self, name: str) -> None:
        (self.signals / name).touch()

    def headers(self, *roles: str, sub: str = DEVELOPER) -> dict[str, str]:
        return self.platform.headers(sub, *(roles or ("developer",)))

    async def create_run(self, client: httpx.AsyncClient, repository: str, sha: str, branch: str = "main") -> str:
        resp = await client.post(
            f"{self.gateway_url}/v1/runs",
            json={"repository": repository, "branch": branch, "commit_sha": sha, "trigger_type": "push"},
            headers=self.headers(),
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    async def get_run(self, client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
        resp = await client.get(f"{self.gateway_url}/v1/runs/{run_id}", headers=self.headers("viewer"))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body


@pytest.fixture(scope="session")
def lane(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    lane = Lane(platform, tmp_path_factory.mktemp("live"))
    try:
        lane.start()
        yield lane
    finally:
        lane.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as c:
        yield c


class Event(msgspec.Struct):
    event: str
    data: str
    id: str

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


class SseReader:
    """Reads Server-Sent Events (and comments) from an httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self) -> Event | None:
        """The next event; ``None`` when the stream has ended."""
        data: list[str] = []
        name = ""
        event_id = ""
        async for line in self.lines:
            if line == "":
                if data:
                    return Event(name or "message", "\n".join(data), event_id)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
            elif field == "id":
                event_id = value
        return None

    async def next_comment(self) -> str:
        """Wait for the next comment line (heartbeats, the feed's ``subscribed``)."""
        seen = len(self.comments)
        async for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            if len(self.comments) > seen:
                return self.comments[-1]
        raise AssertionError("the stream ended without a comment")

    async def rest(self) -> list[Event]:
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events
