"""Internal route for workers: one task's step reports and final status in one transaction.

``PUT /v1/tasks/{id}/report`` is the batched form of ``PUT /v1/steps/{id}/status`` (each step,
in order) followed by ``PUT /v1/tasks/{id}/status``: the same transitions (``service.mark_step``
and ``service.mark_task`` with worker rules), the same roll-ups, one request and one commit (``service.report_task``: two round trips under
the run lock plus a roll-up when one is due). A
step reported ``success``/``failed`` while still ``pending`` (it finished before its ``running``
report was due) goes through ``running`` first, so it gets both timestamps. Any refused
transition (409) rolls the whole report back.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Request, Response, put
from litestar.enums import MediaType

from forge_common.auth import Permission
from forge_common.errors import InvalidRequest
from forge_common.runtime import Runtime

from . import service
from .api import decode_body

__all__ = ["ROUTES", "StepReport", "TaskReport"]

_encoder = msgspec.json.Encoder()


class StepReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    status: Literal["running", "success", "failed"]
    exit_code: int | None = None
    logs_s3_key: str | None = None


class TaskReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    steps: list[StepReport] = msgspec.field(default_factory=list)
    status: Literal["running", "success", "failed"] | None = None
    error: str | None = None


def _validate(cmd: TaskReport) -> None:
    if not cmd.steps and cmd.status is None:
        raise InvalidRequest("a report needs steps, a task status, or both", {"field": "steps"})
    if len(cmd.steps) > 1000:
        raise InvalidRequest("at most 1000 steps per report", {"field": "steps"})
    if cmd.error is not None and len(cmd.error) > 65536:
        raise InvalidRequest("error must be at most 65536 characters", {"field": "error"})
    for i, step in enumerate(cmd.steps):
        if step.logs_s3_key is not None and not (1 <= len(step.logs_s3_key) <= 1024):
            raise InvalidRequest("logs_s3_key must be 1 to 1024 characters", {"field": f"steps[{i}].logs_s3_key"})
        if step.exit_code is not None and not (-(2**31) <= step.exit_code < 2**31):
            raise InvalidRequest("exit_code must be a 32-bit integer", {"field": f"steps[{i}].exit_code"})


@put(
    "/v1/tasks/{task_id:str}/report",
    opt={"permission": Permission.INTERNAL_STATUS},
    summary="Worker report of a task's steps and status in one transaction",
)
async def report_task(request: Request[Any, Any, Any], task_id: str, runtime: Runtime) -> Response[bytes]:
    tid = service.parse_uuid(task_id, "task")
    cmd = decode_body(await request.body(), TaskReport)
    _validate(cmd)
    step_ids = [service.parse_uuid(s.id, "step") for s in cmd.steps]
    reports = [(sid, s.status, s.exit_code, s.logs_s3_key) for sid, s in zip(step_ids, cmd.steps, strict=True)]
    async with runtime.pool.connection() as conn, conn.transaction():
        task_row, step_rows = await service.report_task(conn, tid, reports, cmd.status, cmd.error)
    task = service.task_view(task_row) if task_row is not None else None
    steps = [service.step_view(row) for row in step_rows]
    body = {"task": task, "steps": steps}
    return Response(_encoder.encode(body), status_code=200, media_type=MediaType.JSON)


ROUTES: list[Any] = [report_task]
