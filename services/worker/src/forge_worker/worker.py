"""The worker process: pulls jobs per worker type and hands each delivery to the job handler.

Several jobs run at once in one process (``FORGE_WORKER_CONCURRENCY`` per job type), each with
its own pull subscription on the type's durable consumer. What a job does is in ``handling``
(delivery, reply, ack, retries), ``ci`` (steps), ``discovery`` and ``release``; what it tells the
pipeline service is in ``reporter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from forge_common import jobs
from forge_common.client import ClientCredentials, ServiceClient
from forge_common.jobs import JobSettings, JobType
from forge_common.nats import Names, connect
from forge_common.nats_auth import connect_options
from forge_common.oci import LayoutStore, OciStore, RegistryStore
from forge_common.redact import Redactor, url_credentials
from forge_common.s3 import S3

from . import health
from .artifacts import ArtifactJobRunner
from .ci import CiJobRunner
from .git import GitCache
from .handling import CancelledRuns, JobHandler, Runners
from .publish import Destinations
from .release import ReleaseJobRunner
from .reporter import Reporter
from .republish import PublishJobRunner
from .sandbox import Limits, Sandbox, WarmPool, sweep_stale
from .settings import Settings
from .steps import ProcessTable, StepRunner

__all__ = ["Worker"]

log = structlog.get_logger(__name__)


class Worker:
    def __init__(self, settings: Settings, job_settings: JobSettings) -> None:
        self.settings = settings
        self.job_settings = job_settings
        self.names = Names(settings.nats_prefix)
        self.s3 = S3.from_settings(settings)
        cache = Path(settings.git_cache_dir)
        # What must never appear in a run's errors or the logs this worker writes.
        self.redact = Redactor(
            [
                settings.worker_client_secret,
                settings.s3_secret_key,
                *url_credentials(settings.git_url_template),
                *url_credentials(settings.nats_url),
                *url_credentials(settings.database_url),
            ]
        )
        self.git = GitCache(cache, settings.git_url_template, redact=self.redact, timeout=settings.git_timeout)
        self.table = ProcessTable(cache / "running")
        self.credentials = ClientCredentials(
            settings.oidc_issuer, settings.worker_client_id, settings.worker_client_secret
        )
        self.reporter = Reporter(
            settings.callback_url, self.credentials, attempts=settings.status_attempts, redact=self.redact
        )
        self.releases = ServiceClient(
            (settings.release_url or settings.gateway_url or "http://invalid").rstrip("/"), "release"
        )
        self.cancelled = CancelledRuns()
        self.sandbox: Sandbox | None = None
        self.handler: JobHandler | None = None
        self._nc: NATS | None = None
        # aiobotocore's client and its context manager have no type information.
        self._s3_context: Any = None
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._http: web.AppRunner | None = None

    async def prepare(self) -> Runners:
        """The sandbox and the job runners, without NATS (the single-job command uses only
        this). Raises :class:`SandboxUnavailable` when steps cannot be sandboxed on this
        machine and FORGE_STEP_SANDBOX is not ``none``."""
        _use_pidfd_child_watcher()
        settings = self.settings
        self.sandbox = await Sandbox.create(
            settings.step_sandbox,
            work_dir=settings.step_work_path,
            user_name=settings.step_user,
            readonly_paths=tuple(p for p in settings.step_readonly_paths.split(":") if p),
            writable_paths=tuple(p for p in settings.step_writable_paths.split(":") if p),
            watch_interval=settings.step_watch_interval,
            kill_grace=settings.step_kill_grace,
            workspace=settings.step_workspace,
            scope=settings.step_sandbox_scope,
        )
        if self.sandbox.kind == "none":
            log.warning("worker.no_sandbox", detail="FORGE_STEP_SANDBOX=none: steps run unsandboxed")
        else:
            log.info(
                "worker.sandbox",
                kind=self.sandbox.kind,
                tool=self.sandbox.tool,
                user=self.sandbox.user,
                workspace=self.sandbox.workspace,
                scope=self.sandbox.scope,
                limits="polling",
            )
        self._sweep()
        self._loops.append(asyncio.create_task(self._sweep_periodically()))
        self.table.reap_orphans()
        ci = await self._ci()
        artifacts = self._artifacts(ci)
        publisher = PublishJobRunner(
            artifacts.destinations,
            Path(settings.git_cache_dir) / "artifact-publish",
            settings.oci_insecure,
            settings.oci_username,
            settings.oci_password,
        )
        return Runners(self.git, ci, self._release(), artifacts, self.cancelled, publisher)

    async def start(self) -> None:
        """Raises :class:`SandboxUnavailable` (before connecting anywhere) when steps cannot be
        sandboxed on this machine and FORGE_STEP_SANDBOX is not ``none``."""
        runners = await self.prepare()
        settings = self.settings
        self._nc = nc = await connect(
            settings.nats_url,
            f"forge-worker-{os.getpid()}",
            **connect_options("worker", settings.nats_user, settings.nats_password, settings.nats_creds),
        )
        js = nc.jetstream(timeout=5.0)
        await self._wait_job_streams(js)
        self.handler = JobHandler(
            nc,
            js,
            self.names,
            self.s3,
            self.job_settings,
            self.cancelled,
            self.git,
            runners.ci,
            runners.releases,
            runners.artifacts,
            redact=self.redact,
            publisher=runners.publisher,
        )
        await nc.subscribe(self.names.subject("pipeline.cancel.*"), cb=self._on_cancel)
        if self.settings.worker_http_port:
            self._http = await health.start_health_server(
                self.settings.host, self.settings.worker_http_port, lambda: nc.is_connected
            )
        self._warm_up()
        await self._start_pulling(js)
        log.info("worker.started", types=self.settings.job_types(), concurrency=self.settings.worker_concurrency)

    def _warm_up(self) -> None:
        """Keep ``FORGE_STEP_WARM_SANDBOXES`` task sandboxes started ahead of their tasks (where
        tasks have one: bubblewrap, task scope). Not in :meth:`prepare`: the single-job command
        runs one task, whose sandbox nothing could start earlier."""
        assert self.sandbox is not None
        size = self.settings.step_warm_sandboxes
        if size > 0 and WarmPool.fits(self.sandbox):
            self.sandbox.warm = WarmPool(self.sandbox, size)
            self.sandbox.warm.refill()

    async def _wait_job_streams(self, js: JetStreamContext) -> None:
        """Until the job streams exist. On an authenticated NATS only the pipeline service may
        create them (docs/operations.md, "NATS credentials"): a worker that starts first waits."""
        while True:
            try:
                await jobs.ensure_job_streams(js, self.names, self.job_settings, update=False)
                return
            except (NatsTimeoutError, TimeoutError, NatsError) as exc:
                log.warning("worker.waiting_for_job_streams", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(2.0)

    async def _ci(self) -> CiJobRunner:
        self._s3_context = self.s3.client()
        s3_client = await self._s3_context.__aenter__()
        assert self.sandbox is not None
        runner = StepRunner(
            s3_client,
            self.s3.bucket,
            self.table,
            self.settings.log_flush_interval,
            self.settings.log_max_bytes,
            self.sandbox,
            upload_retry_for=self.settings.log_upload_retry_for,
            part_size=self.settings.log_part_bytes,
        )
        defaults = Limits(
            memory=self.settings.step_memory_bytes,
            processes=self.settings.step_processes,
            timeout=self.settings.step_timeout,
        )
        return CiJobRunner(
            self.git,
            runner,
            self.table,
            self.reporter,
            defaults,
            self.settings.running_report_delay,
            self.cancelled.__contains__,
        )

    def _artifacts(self, ci: CiJobRunner) -> ArtifactJobRunner:
        s = self.settings
        store: OciStore = (
            RegistryStore(s.oci_registry, s.oci_insecure, s.oci_username, s.oci_password)
            if s.oci_registry
            else LayoutStore(s.layout_root)
        )
        destinations = Destinations(
            ci.runner.s3, s.github_api_url, s.github_token, s.oci_insecure, s.oci_username, s.oci_password
        )
        return ArtifactJobRunner(
            self.git,
            ci.runner,
            self.reporter,
            ci.defaults,
            store,
            destinations,
            self.job_settings.timeout("artifact"),
            s.running_report_delay,
            self.cancelled.__contains__,
            Path(s.git_cache_dir) / "artifact-builds",
        )

    def _release(self) -> ReleaseJobRunner:
        return ReleaseJobRunner(self.credentials, self.releases, self.settings.release_retry_for)

    async def _start_pulling(self, js: JetStreamContext) -> None:
        stream = self.names.stream(jobs.JOBS_STREAM)
        total = 0
        for job_type in self.settings.job_types():
            concurrency = self.settings.worker_concurrency
            slots = concurrency if job_type == "ci" else max(2, concurrency // 4)
            total += slots
            for _ in range(slots):
                sub = await js.pull_subscribe_bind(durable=jobs.consumer_name(self.names, job_type), stream=stream)  # type: ignore[arg-type]
                self._loops.append(asyncio.create_task(self._pull(job_type, sub)))  # type: ignore[arg-type]
        health.SLOTS.labels("busy").set(0)
        health.SLOTS.labels("idle").set(total)

    async def stop(self) -> None:
        """Stop pulling; let running jobs finish for ``shutdown_grace``, then kill their steps
        (the jobs are naked and redelivered elsewhere)."""
        self._stopping.set()
        busy = set(self._inflight)
        for task in self._loops:
            if task not in busy:
                task.cancel()
        if busy:
            await self._drain(busy)
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.cleanup()
        await self.close()
        if self._nc is not None and not self._nc.is_closed:
            # Every reply and ack is already written; closing beats draining 30 pull requests.
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def close(self) -> None:
        """Close what :meth:`prepare` and :meth:`start` opened: the warm sandboxes, the
        reporter's and release client's connections, the S3 client."""
        if self.sandbox is not None and self.sandbox.warm is not None:
            warm, self.sandbox.warm = self.sandbox.warm, None
            await warm.close()
        await self.reporter.close()
        await self.releases.close()
        if self._s3_context is not None:
            await self._s3_context.__aexit__(None, None, None)
            self._s3_context = None

    async def _drain(self, busy: set[asyncio.Task[None]]) -> None:
        log.info("worker.draining", jobs=len(busy))
        _, pending = await asyncio.wait(busy, timeout=self.settings.shutdown_grace)
        if pending:
            for run_id in list(self.table.by_run):
                self.table.cancel_run(run_id)
            _, pending = await asyncio.wait(pending, timeout=self.settings.step_kill_grace + 2)
        for task in pending:
            task.cancel()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        log.info("worker.stopping")
        await self.stop()
        log.info("worker.stopped")

    async def _pull(self, job_type: JobType, sub: JetStreamContext.PullSubscription) -> None:
        assert self.handler is not None
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(1, timeout=30)
            except (NatsTimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS reconnecting; try again shortly
                log.warning("worker.fetch_failed", job_type=job_type, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                task = asyncio.current_task()
                assert task is not None
                self._inflight.add(task)
                health.SLOTS.labels("busy").inc()
                health.SLOTS.labels("idle").dec()
                try:
                    await self.handler.handle(job_type, msg)
                finally:
                    self._inflight.discard(task)
                    health.SLOTS.labels("busy").dec()
                    health.SLOTS.labels("idle").inc()

    async def _on_cancel(self, msg: Msg) -> None:
        run_id = msg.subject.rsplit(".", 1)[-1]
        self.cancelled.add(run_id)
        killed = self.table.cancel_run(run_id)
        if killed:
            log.info("worker.cancel", run_id=run_id, steps=killed)

    def _sweep(self) -> None:
        """Remove the job directories a killed worker left in the step work directory."""
        removed = sweep_stale(self.settings.step_work_path)
        if removed:
            log.info("worker.stale_workspaces_removed", count=removed)

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.step_sweep_interval)
            await asyncio.to_thread(self._sweep)


def _use_pidfd_child_watcher() -> None:
    """Python 3.11 waits for each step in a thread of its own; a pidfd on the event loop costs
    ~0.4 ms less CPU per step (3.12+ does this by itself)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        watcher = asyncio.PidfdChildWatcher()
        asyncio.set_child_watcher(watcher)
        watcher.attach_loop(asyncio.get_running_loop())
    except OSError:  # kernel without pidfd (< 5.3): keep the threaded watcher
        return
