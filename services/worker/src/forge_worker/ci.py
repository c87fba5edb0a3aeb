"""CI jobs: run a task's steps in the commit's checkout, one after the other, and report them.

A step's ``running`` report is sent only if the step outlives ``FORGE_RUNNING_REPORT_DELAY``;
its outcome goes in one ``PUT /v1/tasks/{id}/report`` together with the task's outcome when it is
the task's last word, so a quick task costs one request. A redelivered job resumes: steps that
succeeded on an earlier delivery are not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import Literal

import structlog
from opentelemetry import trace

from forge_common.jobs import CiJob, CiResult, JobReply, StepJob, StepResult
from forge_common.tracing import inject

from .git import GitCache, GitError
from .reporter import FINAL_TASK_STATUSES, InfraError, Reporter, StepReport, StepState
from .sandbox import Limits, Workspace, format_bytes
from .steps import ProcessTable, StepRunner, log_key

__all__ = ["CiJobRunner"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.worker")

CiReply = JobReply[CiResult]


class _Cancelled(Exception):
    """The run was cancelled while the job ran: stop, answer ``cancelled``."""


class CiJobRunner:
    def __init__(
        self,
        git: GitCache,
        runner: StepRunner,
        table: ProcessTable,
        reporter: Reporter,
        defaults: Limits,
        running_report_delay: float,
        is_cancelled: Callable[[str], bool],
    ) -> None:
        self.git = git
        self.runner = runner
        self.table = table
        self.reporter = reporter
        self.defaults = defaults
        self.running_report_delay = running_report_delay
        self.is_cancelled = is_cancelled

    async def run(self, job: CiJob, deliveries: int, later: contextlib.AsyncExitStack | None = None) -> CiReply:
        """Run the job's steps; ``later``: where the workspace's teardown goes, so that the reply
        is sent first (the next group of the run is dispatched meanwhile), else before returning."""
        done: dict[str, StepState] = {}
        if deliveries > 1:
            resumed = await self._resume(job)
            if isinstance(resumed, JobReply):
                return resumed
            done = resumed
        # No separate "task running" call: the first step's "running" report starts the task
        # (and its phase and run) in the same transaction, one round trip less per task.
        try:
            _, checkout = await self.git.checkout(job.repository, job.commit_sha)
        except GitError as exc:
            await self.reporter.finish_task(job.task_id, "failed", str(exc))
            return CiReply(status="failed", error=str(exc))
        workdir = (checkout / job.project_path).resolve()
        if not workdir.is_relative_to(checkout.resolve()) or not workdir.is_dir():
            missing = f"project directory {job.project_path!r} does not exist at {job.commit_sha}"
            await self.reporter.finish_task(job.task_id, "failed", missing)
            return CiReply(status="failed", error=missing)
        cwd = str(workdir.relative_to(checkout.resolve()))
        # The task's own writable copy: its steps share it, nothing else sees it.
        sandbox = self.runner.sandbox
        try:
            workspace = await Workspace.for_sandbox(sandbox, checkout, warm=any(s.network for s in job.steps))
        except OSError as exc:
            raise InfraError(f"cannot prepare the task's workspace: {exc}") from exc
        if later is not None:
            later.push_async_callback(_release_after_reply, workspace, job.task_id)
            return await self._run_steps(job, done, workspace, cwd, self._env(job))
        try:
            return await self._run_steps(job, done, workspace, cwd, self._env(job))
        finally:
            await workspace.release()

    async def _resume(self, job: CiJob) -> dict[str, StepState] | CiReply:
        """A redelivery: a previous attempt may have finished some steps (or the whole task)."""
        self.table.reap_orphans()
        state = await self.reporter.run(job.run_id)
        task = state.task(job.task_id) if state else None
        if task is None:
            return CiReply(status="cancelled", error="the task no longer exists")
        if task.status in FINAL_TASK_STATUSES:
            return CiReply(status=_reply_status(task.status), error=task.error)
        return {s.id: s for s in task.steps if s.status == "success"}

    @staticmethod
    def _env(job: CiJob) -> dict[str, str]:
        """The step's whole environment (sandbox.ENVIRONMENT_ALLOW_LIST; PATH and HOME are added
        by the sandbox): nothing of the worker's."""
        return {
            "CI": "true",
            "FORGE_RUN_ID": job.run_id,
            "FORGE_TASK_ID": job.task_id,
            "FORGE_REPOSITORY": job.repository,
            "FORGE_COMMIT_SHA": job.commit_sha,
            "FORGE_BRANCH": job.branch,
            "FORGE_PHASE": job.phase,
            "FORGE_PROJECT": job.project,
        }

    async def _run_steps(
        self, job: CiJob, done: dict[str, StepState], workspace: Workspace, cwd: str, env: dict[str, str]
    ) -> CiReply:
        results: list[StepResult] = []
        status: Literal["success", "failed"] = "success"
        error: str | None = None
        task_reported = False
        todo = [s for s in job.steps if s.id not in done]
        for step in job.steps:
            if step.id in done:
                results.append(
                    StepResult(id=step.id, name=step.name, status="success", exit_code=done[step.id].exit_code)
                )
                continue
            try:
                # One span per step (the name is the repository's, so it is an attribute); the
                # step's processes get its context as TRACEPARENT, the OpenTelemetry environment
                # carrier, so instrumented build tools continue the run's trace.
                with _tracer.start_as_current_span(
                    "step", attributes={"forge.step": step.name, "forge.phase": job.phase, "forge.project": job.project}
                ):
                    carrier: dict[str, str] = {}
                    inject(carrier)
                    step_env = {**env, **{k.upper(): v for k, v in carrier.items()}}
                    result, task_reported = await self._step(job, step, workspace, cwd, step_env, last=step is todo[-1])
            except _Cancelled:
                return CiReply(status="cancelled", error="the run was cancelled", result=CiResult(steps=results))
            results.append(result)
            if result.status != "success":
                status, error = "failed", result.error
                break
        if not task_reported:
            task_reported = await self.reporter.finish_task(job.task_id, status, error)
        return CiReply(status=status, error=error, result=CiResult(steps=results, reported=task_reported))

    def limits(self, step: StepJob) -> Limits:
        """The step's limits: its own from project.toml, else the worker's defaults."""
        return Limits(
            memory=step.memory_bytes or self.defaults.memory,
            processes=step.processes or self.defaults.processes,
            timeout=float(step.timeout_seconds) if step.timeout_seconds else self.defaults.timeout,
            network=step.network,
        )

    # Over 60 lines on purpose: one step from start to report, in the order it happens.
    async def _step(
        self, job: CiJob, step: StepJob, workspace: Workspace, cwd: str, env: dict[str, str], last: bool
    ) -> tuple[StepResult, bool]:
        """Run one step and report it; the result and whether the task's outcome went with it."""
        if self.is_cancelled(job.run_id):
            raise _Cancelled
        key = log_key(job.run_id, job.phase, job.project, step.name)
        argv = self.runner.argv(step.action, step.command)
        if argv is None:
            return await self._cannot_run(job, step, key)
        cancel = asyncio.Event()
        t0 = time.perf_counter()
        started_at = dt.datetime.now(dt.UTC)
        running = asyncio.create_task(
            self.reporter.running_after(step.id, self.running_report_delay, cancel, started_at)
        )
        limits = self.limits(step)
        try:
            outcome = await self.runner.run(
                run_id=job.run_id,
                argv=argv,
                workspace=workspace,
                cwd=cwd,
                # The step's own variables first: the platform's (FORGE_*, PATH, ...) always win,
                # though discovery already refuses those names.
                env={**step.env, **env, "FORGE_STEP": step.name},
                limits=limits,
                key=key,
                cancel=cancel,
            )
        except BaseException:
            # LogUploadFailed (S3 unreachable for FORGE_LOG_UPLOAD_RETRY_FOR): the job is retried.
            running.cancel()
            raise
        t1 = time.perf_counter()
        if not running.done():
            running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            if not await running:
                raise _Cancelled
        logs = key if outcome.has_log else None
        if outcome.cancelled:
            with contextlib.suppress(Exception):
                await self.reporter.step(step.id, "failed", outcome.exit_code, logs, started_at, outcome.ended_at)
            raise _Cancelled
        result = StepResult(
            id=step.id,
            name=step.name,
            status="success" if outcome.exit_code == 0 else "failed",
            exit_code=outcome.exit_code,
            logs_s3_key=logs,
        )
        if outcome.limit is not None:
            result.error = _limit_error(step.name, outcome.limit, limits)
        elif outcome.exit_code != 0:
            result.error = f"step {step.name} failed with exit code {outcome.exit_code}"
        report = StepReport(
            id=step.id,
            status=result.status,
            exit_code=outcome.exit_code,
            logs_s3_key=logs,
            started_at=started_at,
            completed_at=outcome.ended_at,
        )
        task_status = "failed" if result.status == "failed" else ("success" if last else None)
        reported = await self.reporter.outcome(job.task_id, report, task_status, result.error)
        log.debug(
            "worker.step_timing",
            run_ms=round((t1 - t0) * 1000 - outcome.upload_ms, 1),
            upload_ms=round(outcome.upload_ms, 1),
            report_ms=round((time.perf_counter() - t1) * 1000, 1),
        )
        return result, reported

    async def _cannot_run(self, job: CiJob, step: StepJob, key: str) -> tuple[StepResult, bool]:
        message = f"step {step.name}: earthly is not installed on this worker (target {step.command})"
        await self.runner.upload(key, (message + "\n").encode())
        report = StepReport(id=step.id, status="failed", exit_code=127, logs_s3_key=key)
        reported = await self.reporter.outcome(job.task_id, report, "failed", message)
        return StepResult(id=step.id, name=step.name, status="failed", exit_code=127, error=message), reported


async def _release_after_reply(workspace: Workspace, task_id: str) -> None:
    """Tear the task's workspace down once its reply is out: the job is done whatever happens
    here; what cannot be removed now is swept later (``sandbox.sweep_stale``)."""
    try:
        await workspace.release()
    except OSError as exc:
        log.warning("worker.workspace_release_failed", task_id=task_id, error=str(exc))


def _limit_error(step: str, limit: str, limits: Limits) -> str:
    if limit == "timeout":
        return f"step {step} timed out after {round(limits.timeout or 0)}s"
    if limit == "memory":
        return f"step {step} was killed: it used more than its memory limit of {format_bytes(limits.memory)}"
    return f"step {step} was killed: it reached its limit of {limits.processes} processes"


def _reply_status(current: str) -> Literal["success", "failed", "cancelled"]:
    if current == "success":
        return "success"
    if current in ("cancelled", "skipped", "missing"):
        return "cancelled"
    return "failed"
