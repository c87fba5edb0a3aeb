"""Reporting to the pipeline service: step and task status with a client-credentials
service-account token, and the run's state a redelivered job resumes from."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Literal

import msgspec
import structlog

from forge_common.client import ClientCredentials, ServiceClient, ServiceResponse
from forge_common.errors import BadGateway, GatewayTimeout
from forge_common.redact import Redactor

__all__ = ["Conflict", "InfraError", "Reporter", "RunState", "StepReport", "TaskState"]

log = structlog.get_logger(__name__)


class InfraError(Exception):
    """The platform could not be reached or answered unexpectedly; the job will be retried."""


class Conflict(Exception):
    """The pipeline service refused a transition; ``current`` is the entity's status."""

    def __init__(self, current: str | None, body: Any) -> None:
        self.current = current
        self.body = body
        super().__init__(f"status conflict (current: {current})")


ReportedStatus = Literal["running", "success", "failed"]
FINAL_TASK_STATUSES = ("success", "failed", "skipped", "cancelled")


class StepReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One step's entry in ``PUT /v1/tasks/{id}/report``; the times are this worker's clock
    (the service keeps them within [the task's first dispatch, the report's arrival])."""

    id: str
    status: ReportedStatus
    exit_code: int | None = None
    logs_s3_key: str | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None


class _TaskStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    error: str | None = None


class _StepStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    exit_code: int | None = None
    logs_s3_key: str | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None


class _TaskReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    steps: list[StepReport]
    status: str | None = None
    error: str | None = None


class StepState(msgspec.Struct, kw_only=True):
    id: str
    status: str
    exit_code: int | None = None


class TaskState(msgspec.Struct, kw_only=True):
    id: str
    status: str
    error: str | None = None
    steps: list[StepState] = msgspec.field(default_factory=list)


class _PhaseState(msgspec.Struct, kw_only=True):
    tasks: list[TaskState] = msgspec.field(default_factory=list)


class RunState(msgspec.Struct, kw_only=True):
    """What ``GET /v1/runs/{id}`` says, as far as resuming a task needs it."""

    phases: list[_PhaseState] = msgspec.field(default_factory=list)

    def task(self, task_id: str) -> TaskState | None:
        for phase in self.phases:
            for task in phase.tasks:
                if task.id == task_id:
                    return task
        return None


class Reporter:
    def __init__(
        self,
        base_url: str,
        credentials: ClientCredentials,
        name: str = "pipeline",
        attempts: int = 4,
        redact: Redactor | None = None,
    ) -> None:
        self.client = ServiceClient(base_url, name, timeout=10.0, limit=64)
        self.credentials = credentials
        self.attempts = attempts
        # Task errors are shown to every viewer of the run: no secret of this process in them.
        self.redact = redact or Redactor()

    async def close(self) -> None:
        await self.client.close()

    async def call(self, method: str, path: str, body: msgspec.Struct | None = None) -> ServiceResponse:
        """One authenticated call, retried on transport errors, 5xx and an expired token."""
        attempts = self.attempts
        delay = 0.2
        refreshed = False
        last = ""
        for attempt in range(attempts):
            try:
                token = await self.credentials.token()
                resp = await self.client.request(method, path, token=token, json=body)
            except (BadGateway, GatewayTimeout) as exc:
                last = exc.message
            else:
                if resp.status == 401 and not refreshed:
                    self.credentials.invalidate()
                    refreshed = True
                    continue
                if resp.status < 500:
                    return resp
                last = f"HTTP {resp.status}: {resp.error_code() or resp.body}"
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2.5, 3.0)
        # Named by service, not by host: this message can end up on the run.
        raise InfraError(f"{method} {path} on the {self.client.name} service failed: {last}")

    async def _status(self, kind: str, entity_id: str, body: msgspec.Struct, action: str = "status") -> None:
        resp = await self.call("PUT", f"/v1/{kind}/{entity_id}/{action}", body)
        if resp.ok:
            return
        if resp.status == 409:
            details = resp.body.get("error", {}).get("details", {}) if isinstance(resp.body, dict) else {}
            raise Conflict(details.get("current_status"), resp.body)
        if resp.status == 404:
            raise Conflict("missing", resp.body)
        raise InfraError(f"PUT /v1/{kind}/{entity_id}/{action} answered {resp.status}: {resp.body}")

    async def task(self, task_id: str, status: str, error: str | None = None) -> None:
        text = self.redact(error)[:4000] if error else None
        await self._status("tasks", task_id, _TaskStatus(status=status, error=text))

    async def step(
        self,
        step_id: str,
        status: str,
        exit_code: int | None = None,
        logs_s3_key: str | None = None,
        started_at: dt.datetime | None = None,
        completed_at: dt.datetime | None = None,
    ) -> None:
        body = _StepStatus(
            status=status,
            exit_code=exit_code,
            logs_s3_key=logs_s3_key or None,
            started_at=started_at,
            completed_at=completed_at,
        )
        await self._status("steps", step_id, body)

    async def report(
        self, task_id: str, steps: list[StepReport], status: str | None = None, error: str | None = None
    ) -> None:
        """Steps' and (optionally) the task's status in one request (``PUT /v1/tasks/{id}/report``)."""
        body = _TaskReport(steps=steps, status=status, error=self.redact(error)[:4000] if error else None)
        await self._status("tasks", task_id, body, "report")

    async def run(self, run_id: str) -> RunState | None:
        resp = await self.call("GET", f"/v1/runs/{run_id}")
        if resp.status == 404:
            return None
        if not resp.ok or not isinstance(resp.body, dict):
            raise InfraError(f"GET /v1/runs/{run_id} answered {resp.status}")
        return msgspec.convert(resp.body, RunState)

    # --- what a CI job reports, conflicts tolerated -----------------------------------------------

    async def finish_task(self, task_id: str, status: str, error: str | None) -> bool:
        """The task's outcome when no step report carried it (it failed before its first step,
        or every step had already run): ``running`` first, as a worker reports it. False when
        the service refused it (the task was finished elsewhere)."""
        try:
            await self.task(task_id, "running")
            await self.task(task_id, status, error)
        except Conflict as exc:
            log.info("worker.task_final_conflict", task_id=task_id, current=exc.current)
            return False
        return True

    async def running_after(
        self, step_id: str, delay: float, cancel: asyncio.Event, started_at: dt.datetime | None = None
    ) -> bool:
        """Report the step ``running`` (since ``started_at``) once it has run for ``delay``
        (quick steps skip this call: their final report carries both transitions). False when
        the service refuses (the run was cancelled or the step already finished elsewhere):
        ``cancel`` stops the step."""
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self.step(step_id, "running", started_at=started_at)
        except Conflict:
            cancel.set()
            return False
        return True

    async def outcome(self, task_id: str, step: StepReport, task_status: str | None, error: str | None) -> bool:
        """The step's outcome, with the task's when it is the task's last word; True when the
        task status went with it."""
        try:
            await self.report(task_id, [step], task_status, error)
        except Conflict as exc:
            log.info("worker.final_report_conflict", task_id=task_id, current=exc.current)
            return False
        return task_status is not None
