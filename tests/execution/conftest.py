"""Execution tests: isolated "cells" of pipeline instance(s) + workers on the shared servers.

A cell has its own database, NATS prefix and git cache, so its dispatcher and workers never
see the shared platform's jobs (whose workers fetch from github.com), and tests can kill its
processes freely. Repositories are real local git repositories served through
``FORGE_GIT_URL_TEMPLATE=file:///.../{repository}.git``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from forge_dev.stack import Process, free_port
from forge_dev.testing import Platform, read_events, wait_for_event

TERMINAL = ("success", "failed", "cancelled")


class GitRepo:
    """A bare repository ``{root}/{owner}/{name}.git`` plus a working clone to commit from."""

    def __init__(self, root: Path, repository: str) -> None:
        self.repository = repository
        self.bare = root / f"{repository}.git"
        self.work = root / "work" / repository
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self._git("init", "-q", "-b", "main", cwd=self.work)
        self._git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @staticmethod
    def _git(*args: str, cwd: Path) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Forge Test",
            "GIT_AUTHOR_EMAIL": "test@forge.local",
            "GIT_COMMITTER_NAME": "Forge Test",
            "GIT_COMMITTER_EMAIL": "test@forge.local",
        }
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout

    def commit(self, files: dict[str, str | None], message: str = "change", branch: str = "main") -> str:
        """Write (or with None delete) files, commit, push; returns the commit SHA."""
        for path, content in files.items():
            target = self.work / path
            if content is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        self._git("add", "-A", cwd=self.work)
        self._git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        self._git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return self._git("rev-parse", "HEAD", cwd=self.work).strip()


class Cell:
    def __init__(self, platform: Platform, name: str, env: dict[str, str] | None = None) -> None:
        self.platform = platform
        self.tag = f"{name}{uuid.uuid4().hex[:6]}"
        self.prefix = f"{platform.nats_prefix}x{self.tag}"
        self.root = Path(tempfile.mkdtemp(prefix=f"forge-exec-{self.tag}-"))
        self.repos = self.root / "repos"
        self.cache = self.root / "git-cache"
        # Steps run sandboxed and see nothing of the host but this directory, which the cell's
        # workers share with them read-write (FORGE_STEP_WRITABLE_PATHS): barriers, counters.
        self.shared = Path(tempfile.mkdtemp(prefix=f"forge-exec-shared-{self.tag}-"))
        os.chmod(self.shared, 0o777)  # noqa: S103 - the step user (nobody) writes here
        self.database = f"forge_exec_{self.tag}"
        admin = platform.stack.infra.admin_database_url
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        from forge_dev.stack import _with_database

        self.database_url = _with_database(admin, self.database)
        self.env = {
            "FORGE_DATABASE_URL": self.database_url,
            "FORGE_NATS_PREFIX": self.prefix,
            "FORGE_GIT_URL_TEMPLATE": self.repos.as_uri() + "/{repository}.git",
            "FORGE_GIT_CACHE_DIR": str(self.cache),
            "FORGE_LOG_FLUSH_INTERVAL": "0.3s",
            "FORGE_STEP_KILL_GRACE": "0.5s",
            "FORGE_STEP_WRITABLE_PATHS": str(self.shared),
            "FORGE_DB_POOL_MIN": "1",
            "FORGE_DB_POOL_MAX": "4",
            **(env or {}),
        }
        self.metrics_port = 0
        self.pipelines: list[Process] = []
        self.workers: list[Process] = []
        self.releases: list[Process] = []
        self.gateways: list[Process] = []

    def shared_dir(self, name: str) -> Path:
        """A directory steps can write to."""
        path = self.shared / name
        path.mkdir()
        os.chmod(path, 0o777)  # noqa: S103 - the step user (nobody) writes here
        return path

    # processes

    def start_pipeline(self, env: dict[str, str] | None = None) -> Process:
        proc = self.platform.start_process("pipeline", env={**self.env, **(env or {})})
        self.pipelines.append(proc)
        return proc

    def start_release(self) -> Process:
        """A release service on the platform's database (the platform's release API shows its
        releases) that verifies pipeline_run_id against this cell's pipeline, where the runs are."""
        if not self.releases:
            self.releases.append(
                self.platform.start_process(
                    "release",
                    env={
                        "FORGE_PIPELINE_URL": self.pipelines[0].url,
                        "FORGE_DB_POOL_MIN": "1",
                        "FORGE_DB_POOL_MAX": "4",
                    },
                )
            )
        return self.releases[0]

    def start_gateway(self, env: dict[str, str] | None = None) -> Process:
        """A gateway in front of this cell's pipeline instance (the platform's other services
        behind it): from then on the cell's runs are created and read through it, as a client
        does (``url``)."""
        assert self.pipelines, "start a pipeline instance first"
        proc = self.platform.start_process("gateway", env={"FORGE_PIPELINE_URL": self.pipelines[0].url, **(env or {})})
        self.gateways.append(proc)
        return proc

    def start_worker(self, env: dict[str, str] | None = None) -> Process:
        assert self.pipelines, "start a pipeline instance first"
        release_url = self.start_release().url or ""
        proc = self.platform.start_process(
            "worker",
            env={
                **self.env,
                "FORGE_PIPELINE_URL": self.pipelines[0].url,
                "FORGE_RELEASE_URL": release_url,
                **(env or {}),
            },
        )
        self.workers.append(proc)
        return proc

    def wait_workers(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` workers pull (each keeps 8 pull requests open on the ci consumer)."""
        _run_sync(self._wait_workers(count * 8, timeout))

    async def _wait_workers(self, waiting: int, timeout: float) -> None:
        import nats

        from forge_common import jobs
        from forge_common.nats import Names

        names = Names(self.prefix)
        nc = await nats.connect(self.platform.nats_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(Exception):
                    info = await js.consumer_info(names.stream(jobs.JOBS_STREAM), jobs.consumer_name(names, "ci"))
                    if (info.num_waiting or 0) >= waiting:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{waiting // 8} workers did not start pulling in {timeout}s")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    @property
    def url(self) -> str:
        """Where clients reach the cell's runs: its gateway, else a live pipeline instance."""
        if self.gateways:
            return self.gateways[0].url
        alive = [p for p in self.pipelines if p.popen.poll() is None]
        return alive[0].url

    def close(self, dump_logs: bool = False) -> None:
        """Stop everything and drop the cell's database and streams; first print the logs of its
        pipelines and workers when ``dump_logs`` (a failed test) or ``FORGE_EXEC_DUMP_LOGS``."""
        if dump_logs or os.environ.get("FORGE_EXEC_DUMP_LOGS"):
            for proc in [*self.pipelines, *self.workers]:
                if proc.log_path and proc.log_path.exists():
                    print(f"----- {proc.name} -----\n{proc.log_path.read_text(errors='replace')[-20000:]}")
        for proc in [*self.gateways, *self.workers, *self.pipelines, *self.releases]:
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        with contextlib.suppress(Exception):
            with psycopg.connect(self.platform.stack.infra.admin_database_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            _run_sync(_delete_streams(self.platform.nats_url, self.prefix))
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.shared, ignore_errors=True)

    # repositories and runs

    def repo(self, name: str | None = None) -> GitRepo:
        return GitRepo(self.repos, f"exec-{self.tag}/{name or uuid.uuid4().hex[:8]}")

    def headers(self, *roles: str) -> dict[str, str]:
        return self.platform.headers("dev@forge.local", *(roles or ("developer",)))

    async def create_run(self, client: httpx.AsyncClient, repo: GitRepo, sha: str, branch: str = "main") -> str:
        resp = await client.post(
            f"{self.url}/v1/runs",
            json={"repository": repo.repository, "branch": branch, "commit_sha": sha, "trigger_type": "push"},
            headers=self.headers(),
        )
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    async def get_run(self, client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
        resp = await client.get(f"{self.url}/v1/runs/{run_id}", headers=self.headers("viewer"))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def wait_run(
        self,
        client: httpx.AsyncClient,
        run_id: str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll the run until ``until`` holds (default: a terminal status)."""
        check = until or (lambda r: r["status"] in TERMINAL)
        deadline = time.monotonic() + timeout
        while True:
            run = await self.get_run(client, run_id)
            if check(run):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not reach the expected state in {timeout}s: {run}")
            await asyncio.sleep(0.05)

    @property
    def events_view(self) -> Any:
        return SimpleNamespace(nats_url=self.platform.nats_url, nats_prefix=self.prefix)

    async def events(self, event_type: str, run_id: str) -> list[dict[str, Any]]:
        return await read_events(self.events_view, event_type, lambda e: e["data"].get("run_id") == run_id)  # type: ignore[arg-type]

    async def wait_completed(self, run_ids: list[str], timeout: float) -> set[str]:
        """Until ``pipeline.run.completed`` (success or failure) reached the event stream for
        every run of ``run_ids``; returns the runs that did not complete within ``timeout``."""
        import nats
        from nats.js.api import DeliverPolicy

        from forge_common.nats import Names

        names = Names(self.prefix)
        left = set(run_ids)
        nc = await nats.connect(self.platform.nats_url)
        try:
            sub = await nc.jetstream().subscribe(
                names.event_subject("pipeline.run.completed"),
                stream=names.events_stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while left:
                        msg = await sub.next_msg(timeout=None)
                        left.discard(msgspec.json.decode(msg.data)["data"].get("run_id"))
            return left
        finally:
            await nc.close()

    async def wait_event(self, event_type: str, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await wait_for_event(
            self.events_view,  # type: ignore[arg-type]
            event_type,
            lambda e: e["data"].get("run_id") == run_id,
            timeout=timeout,
        )


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _delete_streams(url: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix.upper() + "_"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def steps_of(run: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(phase, project, step) -> step, for assertions."""
    out = {}
    for phase in run["phases"]:
        for task in phase["tasks"]:
            for step in task["steps"]:
                out[(phase["name"], task["project_name"], step["name"])] = step
    return out


def pids_running(pattern: str) -> list[int]:
    """Processes whose command line contains ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
            if pattern in cmd and stat.split(") ", 1)[1][:1] != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


@pytest.fixture(scope="session")
def cell(platform: Platform) -> Iterator[Cell]:
    """One pipeline instance and two workers, shared by the tests that do not kill anything."""
    c = Cell(platform, "main")
    try:
        c.start_pipeline()
        c.start_worker()
        c.metrics_port = free_port()
        c.start_worker(env={"FORGE_WORKER_HTTP_PORT": str(c.metrics_port)})
        c.wait_workers(2)
        yield c
    finally:
        c.close()
