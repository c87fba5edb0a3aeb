"""Internal route for workers: one task's step reports and final status in one transaction.

``PUT /v1/tasks/{id}/report`` is the batched form of ``PUT /v1/steps/{id}/status`` (each step,
in order) followed by ``PUT /v1/tasks/{id}/status``: the same state machine
(``domain.apply_report``), the same roll-ups, one request and one commit
(``service.report_task``: two round trips under the run lock plus a roll-up when one is due).
A step reported ``success``/``failed`` while still ``pending`` (it finished before its
``running`` report was due) goes through ``running`` first, so it gets both timestamps. Any
refused transition (409) rolls the whole report back.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, put
from litestar.enums import MediaType

from forge_common.auth import Permission
from forge_common.errors import InvalidRequest
from forge_common.runtime import Runtime

from . import domain
from .api import SERVICE_KEY, decode_body
from .domain import StepReport, TaskReport
from .schemas import TaskReportBody
from .service import PipelineService

__all__ = ["ROUTES"]

_encoder = msgspec.json.Encoder()


def _validate(body: TaskReportBody) -> None:
    if not body.steps and body.status is None:
        raise InvalidRequest("a report needs steps, a task status, or both", {"field": "steps"})
    if len(body.steps) > 1000:
        raise InvalidRequest("at most 1000 steps per report", {"field": "steps"})
    if body.error is not None and len(body.error) > 65536:
        raise InvalidRequest("error must be at most 65536 characters", {"field": "error"})
    for i, step in enumerate(body.steps):
        if step.logs_s3_key is not None and not (1 <= len(step.logs_s3_key) <= 1024):
            raise InvalidRequest("logs_s3_key must be 1 to 1024 characters", {"field": f"steps[{i}].logs_s3_key"})
        if step.exit_code is not None and not (-(2**31) <= step.exit_code < 2**31):
            raise InvalidRequest("exit_code must be a 32-bit integer", {"field": f"steps[{i}].exit_code"})


def _command(task_id: str, body: TaskReportBody) -> TaskReport:
    steps = tuple(
        StepReport(
            id=domain.parse_uuid(s.id, "step"), status=s.status, exit_code=s.exit_code, logs_s3_key=s.logs_s3_key
        )
        for s in body.steps
    )
    return TaskReport(task_id=task_id, steps=steps, status=body.status, error=body.error, through_running=True)


@put(
    "/v1/tasks/{task_id:str}/report",
    opt={"permission": Permission.INTERNAL_STATUS},
    summary="Worker report of a task's steps and status in one transaction",
)
async def report_task(request: Request[Any, Any, Any], task_id: str, runtime: Runtime) -> Response[bytes]:
    tid = domain.parse_uuid(task_id, "task")
    body = decode_body(await request.body(), TaskReportBody)
    _validate(body)
    service: PipelineService = runtime.extras[SERVICE_KEY]
    result = await service.report(_command(tid, body))
    return Response(_encoder.encode(result), status_code=200, media_type=MediaType.JSON)


ROUTES: list[Any] = [report_task]
