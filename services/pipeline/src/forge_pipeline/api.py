"""HTTP routes of the pipeline service: decode, one call into service.py, encode."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, Parameter
from litestar.response import Stream

from forge_common import event_feed, sse
from forge_common.auth import Permission, Principal, repository_filter, require_repository
from forge_common.batch import MAX_BATCH_ITEMS, BatchResult
from forge_common.errors import InvalidRequest, NotFound
from forge_common.events import Envelope, isoformat
from forge_common.http import decode_body, strict_query
from forge_common.openapi import body_operation, errors, event_stream, internal, response
from forge_common.runtime import Runtime

from . import domain, live, search, store, webhooks
from .domain import StepReport, TaskReport
from .retention import find_tombstone
from .schemas import (
    ErrorBody,
    RunCreate,
    RunCreated,
    RunDetail,
    RunList,
    RunsCancel,
    StepStatusUpdate,
    StepStatusView,
    TaskReportBody,
    TaskReportResult,
    TaskStatusUpdate,
    TaskStatusView,
    WebhookResult,
)
from .service import CancelRuns, CreateRun, PipelineService
from .settings import Settings

__all__ = ["ROUTES", "SERVICE_KEY"]

_encoder = msgspec.json.Encoder()
SERVICE_KEY = "pipeline.service"


def _service(runtime: Runtime) -> PipelineService:
    service: PipelineService = runtime.extras[SERVICE_KEY]
    return service


def _doc(status: int, model: Any, description: str, *errors: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses of a route whose handler returns pre-encoded JSON bytes."""
    spec = {status: response(model, description)}
    for code in errors:
        spec[code] = ResponseSpec(data_container=ErrorBody, description="error envelope", generate_examples=False)
    return spec


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[bytes]:
    raw = body if isinstance(body, bytes) else _encoder.encode(body)
    return Response(raw, status_code=status, media_type=MediaType.JSON, headers=headers)


@post(
    "/v1/runs",
    opt={"permission": Permission.RUNS_WRITE},
    status_code=201,
    summary="Create a pipeline run",
    description="`triggered_by` is the caller's identity whatever the body says; an `Idempotency-Key` "
    "header makes a retry return the first run (`Idempotent-Replayed: true`).",
    operation_class=body_operation(RunCreate, "the commit to run"),
    responses=_doc(201, RunCreated, "the run, pending", 400, 401, 403, 409, 429),
)
async def create_run(request: Request[Any, Any, Any], principal: Principal, runtime: Runtime) -> Response[bytes]:
    body = decode_body(await request.body(), RunCreate)
    require_repository(principal, body.repository)
    if body.triggered_by is not None:
        domain.validate_identity(body.triggered_by)
    run, created = await _service(runtime).create_run(
        CreateRun(
            repository=body.repository,
            branch=body.branch,
            commit_sha=body.commit_sha,
            trigger_type=body.trigger_type,
            # The authenticated caller is who triggered the run, whatever the body claims.
            triggered_by=principal.identity,
            triggered_by_id=f"sub:{principal.subject}",
            idempotency_key=request.headers.get("idempotency-key"),
        )
    )
    headers = {"Location": f"/v1/runs/{run.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(201, RunCreated(id=run.id, status=run.status, started_at=isoformat(run.started_at)), headers)


@get(
    "/v1/runs",
    opt={"permission": Permission.READ, **strict_query()},
    summary="List a repository's runs, newest first",
    description=(
        "Filters combine with AND. Page with limit/offset, or with the opaque cursor: pass a response's"
        " next_cursor (with the same filters) as ?cursor= for the next page; next_cursor is null on the last."
    ),
    responses=_doc(200, RunList, "one page of runs", 400, 401, 403),
)
async def list_runs(
    runtime: Runtime,
    principal: Principal,
    repository: str | None = None,
    branch: str | None = None,
    status: str | None = None,
    triggered_by: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    cursor: str | None = None,
    limit: str | None = None,
    offset: str | None = None,
) -> Response[bytes]:
    # Declared as strings (documented in the OpenAPI); domain.py validates with clear messages.
    # A repository-bound (workload) token lists its own repository's runs only.
    repository = repository_filter(principal, repository)
    filters = domain.ListFilters(
        repository=repository,
        branch=branch,
        status=status,
        triggered_by=triggered_by,
        created_after=created_after,
        created_before=created_before,
        cursor=cursor,
        limit=limit,
        offset=offset,
    )
    return _json(200, await _service(runtime).list_runs(domain.validate_list_query(filters)))


@get(
    "/v1/runs/{run_id:str}",
    opt={"permission": Permission.READ},
    summary="A run with its phases, tasks and steps",
    responses=_doc(200, RunDetail, "the run tree", 400, 401, 403, 404),
)
async def get_run(run_id: str, runtime: Runtime, principal: Principal) -> Response[bytes]:
    rid = domain.parse_uuid(run_id, "run")
    try:
        tree = await _service(runtime).run_tree(rid)
        if principal.repository is not None:
            require_repository(principal, msgspec.json.decode(tree, type=_RunRepository).repository)
        return _json(200, tree)
    except NotFound:
        # Deleted by retention: what is left of it (retention.py), so references still resolve.
        tombstone = await find_tombstone(runtime.pool, rid)
        if tombstone is None:
            raise
        require_repository(principal, tombstone.repository)
        return _json(200, tombstone)


class _RunRepository(msgspec.Struct):
    repository: str


# --- live status, events and logs (live.py; docs/api-live.md) -------------------------------------

_RUN_EVENTS_FORMAT = """\
Server-Sent Events (`text/event-stream`, UTF-8). Each event is a few lines and a blank line:

    id: 4711
    event: step
    data: {"id":"…","task_id":"…","name":"unit","position":0,"status":"running",
    data:  "started_at":"2026-12-01T09:12:03.120391Z","completed_at":null,"exit_code":null}

* `id:` the change's position in the run (increasing integers); send it back as `Last-Event-ID`
  to resume right after it;
* `event:` `run`, `phase`, `task` or `step`; `data:` one JSON document: `id`, `status`,
  `started_at`, `completed_at`, and for a phase `name`, `group`, for a task `phase_id`,
  `project_name`, for a step `task_id`, `name`, `position`, `exit_code`;
* the first event (without `Last-Event-ID`) is `event: run` with the whole tree, as
  `GET /v1/runs/{run_id}` returns it;
* lines starting with `:` are comments: `: heartbeat` after 15 s without an event, `: timeout`
  just before the end a `timeout` parameter asked for.

The stream ends after the run's final `run` event (`success`, `failed`, `cancelled`); the gateway
also ends it when the token that opened it expires: reconnect with a new token and `Last-Event-ID`."""

_PLATFORM_EVENTS_FORMAT = """\
Server-Sent Events (`text/event-stream`, UTF-8). Each event is a few lines and a blank line:

    id: 90211
    event: pipeline.run.completed
    data: {"event_id":"…","event_type":"pipeline.run.completed","timestamp":"…","data":{…}}

* `id:` the event's sequence number in the platform's event stream; send it back as
  `Last-Event-ID` to resume right after it;
* `event:` the event type; `data:` the event envelope exactly as published (its schemas: the
  AsyncAPI document at `/schema/asyncapi.json`);
* lines starting with `:` are comments: `: subscribed` first (from then on nothing published is
  missed), `: heartbeat` after 15 s without an event, `: timeout` just before the end a `timeout`
  parameter asked for.

The stream does not end by itself: only with `timeout`, or at the gateway when the token that
opened it expires (reconnect with a new token and `Last-Event-ID`)."""


def _sse_responses(description: str) -> dict[int, ResponseSpec]:
    return {
        200: ResponseSpec(
            data_container=str, media_type=sse.CONTENT_TYPE, description=description, generate_examples=False
        ),
        **{code: spec for code, spec in _doc(200, None, "", 400, 401, 403, 404).items() if code != 200},
    }


# Parameters declared so that they appear in the OpenAPI document, read and judged by sse.py.
_RunLastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="resume right after the event with this `id:` (no tree first); 0 replays the run's whole history",
        schema_extra={"pattern": "^[0-9]+$"},
    ),
]
_PlatformLastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description="resume right after the event with this `id:` (a sequence number; events are kept 7 days);"
        " without it the stream starts with what is published from now on",
        schema_extra={"pattern": "^[0-9]+$"},
    ),
]
_StreamTimeout = Annotated[
    str | None,
    Parameter(
        description="end the stream after this many seconds (as Kubernetes watches' `timeoutSeconds`);"
        " reconnect with `Last-Event-ID` to go on. Without it the stream lasts as long as it has events to send",
        schema_extra=sse.TIMEOUT_SCHEMA,
    ),
]
_Range = Annotated[
    str | None, HeaderParameter(name="Range", description="one byte range: bytes=START-[END] or bytes=-N")
]


def _settings(runtime: Runtime) -> Settings:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    return settings


def _hub(runtime: Runtime) -> live.ChangeHub:
    hub: live.ChangeHub = runtime.extras[live.HUB_KEY]
    return hub


@get(
    "/v1/runs/{run_id:str}/events",
    opt={
        "permission": Permission.READ,
        # The first run event is the tree; later ones are changes.
        **event_stream(
            ("run", (RunDetail, live.RunChange)),
            ("phase", live.PhaseChange),
            ("task", live.TaskChange),
            ("step", live.StepChange),
        ),
    },
    summary="Live status of a run (Server-Sent Events)",
    description=(
        "A first `run` event with the whole tree (as GET /v1/runs/{id}), then one event per status change"
        " of the run, a phase, a task or a step (`event:` run, phase, task or step). Every event has an `id:`;"
        " reconnect with `Last-Event-ID` to resume after it without loss. Ends after the run's final status,"
        " or after `timeout` seconds, or when the token that opened it expires (the gateway ends it)."
        " A comment heartbeat is sent at least every 15 seconds."
        " Refusals (a bad id or parameter, an unknown run) are JSON error envelopes before the stream starts."
    ),
    responses=_sse_responses(_RUN_EVENTS_FORMAT),
)
async def run_events(
    run_id: str,
    runtime: Runtime,
    principal: Principal,
    last_event_id: _RunLastEventId = None,
    timeout: _StreamTimeout = None,
) -> Stream:
    rid = domain.parse_uuid(run_id, "run")
    after = sse.last_event_id(last_event_id)
    seconds = sse.stream_timeout(timeout)
    if await live.run_state(runtime.pool, rid) is None:
        raise NotFound(f"pipeline run {rid} not found", {"id": rid})
    await _require_run_repository(runtime, principal, rid)
    service = _service(runtime)
    stream = live.run_events(runtime.pool, _hub(runtime), rid, after, service.tree_in)
    return sse.response(stream, _settings(runtime).stream_heartbeat, timeout=seconds)


@get(
    "/v1/events",
    opt={"permission": Permission.READ, **event_stream((None, Envelope))},
    summary="The platform's events as they are published (Server-Sent Events)",
    description=(
        "Each event is the envelope published on NATS (`event:` its type, `id:` its stream sequence)."
        " `types` is a comma-separated list of event types; `repository` (owner/name) keeps the events"
        " about one repository. `Last-Event-ID` resumes after that sequence (events are kept 7 days)."
        " Does not end by itself: `timeout` bounds it, and the gateway ends it when the token that opened it"
        " expires. Refusals (an unknown type, a malformed repository)"
        " are JSON error envelopes before the stream starts."
    ),
    responses=_sse_responses(_PLATFORM_EVENTS_FORMAT),
)
async def platform_events(
    runtime: Runtime,
    principal: Principal,
    types: Annotated[
        str | None,
        Parameter(description="comma-separated event types (pipeline.run.completed,release.created); default all"),
    ] = None,
    repository: Annotated[
        str | None, Parameter(description="only events whose `data.repository` is this owner/name")
    ] = None,
    last_event_id: _PlatformLastEventId = None,
    timeout: _StreamTimeout = None,
) -> Stream:
    # A repository-bound (workload) token follows its own repository's events only.
    event_filter = event_feed.parse_filter(types, repository_filter(principal, repository))
    after = sse.last_event_id(last_event_id)
    seconds = sse.stream_timeout(timeout)
    stream = await event_feed.feed(runtime.js, runtime.names, event_filter, after)
    return sse.response(stream, _settings(runtime).stream_heartbeat, timeout=seconds)


async def _require_run_repository(runtime: Runtime, principal: Principal, run_id: str) -> None:
    """403 when a repository-bound (workload) token asks about another repository's run."""
    if principal.repository is None:
        return
    async with runtime.pool.connection() as conn:
        repository = await store.run_repository(conn, run_id)
    if repository is not None:
        require_repository(principal, repository)


def _follow_flag(value: str | None) -> bool:
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise InvalidRequest("follow must be true or false", {"field": "follow", "value": value[:20]})


@get(
    "/v1/steps/{step_id:str}/logs",
    opt={"permission": Permission.READ},
    summary="A step's log (text/plain; Range requests; ?follow=true streams it while the step runs)",
    description=(
        "`X-Step-Status` is the step's status when the answer began. With `follow=true` the log streams"
        " while the step runs and ends once the step has finished and its whole log was sent; the gateway"
        " also ends it when the token that opened it expires, which looks the same: ask again with"
        " `Range: bytes=<bytes received>-` until an answer that began with the step finished brings"
        " nothing more."
    ),
    responses={
        200: ResponseSpec(data_container=str, media_type="text/plain", description="the log", generate_examples=False),
        206: ResponseSpec(data_container=str, media_type="text/plain", description="the requested range"),
        **{code: spec for code, spec in _doc(200, None, "", 400, 401, 403, 404, 416).items() if code != 200},
    },
)
async def step_logs(
    step_id: str, runtime: Runtime, principal: Principal, follow: str | None = None, byte_range_header: _Range = None
) -> Response[bytes] | Stream:
    sid = domain.parse_uuid(step_id, "step")
    following = _follow_flag(follow)
    byte_range = live.parse_range(byte_range_header)
    info = await live.step_log(runtime.pool, sid)
    await _require_run_repository(runtime, principal, str(info.run_id))
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store", "X-Step-Status": info.status}
    if following:
        if byte_range is not None and (byte_range.suffix is not None or byte_range.end is not None):
            raise InvalidRequest("with follow=true, Range must be bytes=START-", {"field": "Range"})
        start = byte_range.start if byte_range is not None else 0
        interval = _settings(runtime).log_follow_interval
        stream = live.follow_log(runtime.pool, _hub(runtime), runtime.s3, sid, start, interval)
        return Stream(stream, media_type=_TEXT, headers={**headers, "X-Accel-Buffering": "no"})
    return await _log_body(runtime, info.key, byte_range, headers)


_TEXT = "text/plain; charset=utf-8"


async def _log_body(
    runtime: Runtime, key: str, byte_range: live.LogRange | None, headers: dict[str, str]
) -> Response[bytes]:
    header = None
    if byte_range is not None:
        if byte_range.suffix is not None:
            header = f"bytes=-{byte_range.suffix}"
        else:
            header = f"bytes={byte_range.start}-{'' if byte_range.end is None else byte_range.end}"
    async with runtime.s3.client() as client:
        got = await live.read_object(client, runtime.s3.bucket, key, header)
    if got is None:  # nothing stored (yet): the step printed nothing or has not started
        if byte_range is not None and byte_range.suffix is None and byte_range.start > 0:
            raise live.RangeNotSatisfiable("the range starts past the end of the log", {"field": "Range"})
        return Response(b"", status_code=200, media_type=_TEXT, headers=headers)
    data, total = got
    if header is None:
        return Response(data, status_code=200, media_type=_TEXT, headers=headers)
    first = total - len(data) if byte_range is not None and byte_range.suffix is not None else byte_range.start  # type: ignore[union-attr]
    last = first + len(data) - 1
    return Response(
        data, status_code=206, media_type=_TEXT, headers={**headers, "Content-Range": f"bytes {first}-{last}/{total}"}
    )


@delete(
    "/v1/runs/{run_id:str}",
    opt={"permission": Permission.RUNS_WRITE},
    status_code=204,
    summary="Cancel a pending or running run",
    responses={k: v for k, v in _doc(204, None, "cancelled", 400, 401, 403, 404, 409).items() if k != 204},
)
async def cancel_run(run_id: str, runtime: Runtime, principal: Principal) -> None:
    await _service(runtime).cancel_run(domain.parse_uuid(run_id, "run"), principal)


@post(
    "/v1/runs/cancel",
    opt={"permission": Permission.RUNS_WRITE},
    status_code=200,
    summary="Cancel many runs: a list of ids, or a repository's active runs (optionally one branch)",
    description="One result per run, in order, each with the status `DELETE /v1/runs/{id}` would answer "
    "(204, or 400/404/409 with its error); each run is cancelled in a transaction of its own. A filter "
    "matches only pending and running runs. `dry_run: true` answers what each cancellation would answer "
    f"and changes nothing. At most {MAX_BATCH_ITEMS} runs per request (ids given, or runs matching): "
    "more is a 400 and nothing is cancelled.",
    operation_class=body_operation(RunsCancel, "`ids`, or `repository` with optional `branch` and `status`"),
    responses=_doc(200, BatchResult, "one result per run", 400, 401, 403),
)
async def cancel_runs(request: Request[Any, Any, Any], runtime: Runtime, principal: Principal) -> Response[bytes]:
    body = decode_body(await request.body(), RunsCancel)
    if (body.ids is None) == (body.repository is None):
        raise InvalidRequest("give either `ids` or a filter with `repository`", {"field": "ids"})
    if body.ids is not None and (body.branch is not None or body.status is not None):
        raise InvalidRequest("`branch` and `status` filter a repository's runs; not with `ids`", {"field": "ids"})
    command = CancelRuns(
        ids=body.ids,
        repository=domain.validate_repository(body.repository) if body.repository is not None else None,
        branch=domain.validate_branch(body.branch) if body.branch is not None else None,
        status=body.status,
        dry_run=body.dry_run,
        principal=principal,
    )
    return _json(200, await _service(runtime).cancel_runs(command))


@put(
    "/v1/tasks/{task_id:str}/status",
    opt={"permission": Permission.INTERNAL_STATUS, **internal()},
    summary="Worker report of a task's status",
    operation_class=body_operation(TaskStatusUpdate, "the task's new status"),
    responses=_doc(200, TaskStatusView, "the task after the report", 400, 401, 403, 404, 409),
)
async def update_task_status(request: Request[Any, Any, Any], task_id: str, runtime: Runtime) -> Response[bytes]:
    tid = domain.parse_uuid(task_id, "task")
    body = decode_body(await request.body(), TaskStatusUpdate)
    if body.error is not None and len(body.error) > 65536:
        raise InvalidRequest("error must be at most 65536 characters", {"field": "error"})
    return _json(200, await _service(runtime).task_status(tid, body.status, body.error))


@put(
    "/v1/steps/{step_id:str}/status",
    opt={"permission": Permission.INTERNAL_STATUS, **internal()},
    summary="Worker report of a step's status",
    operation_class=body_operation(StepStatusUpdate, "the step's new status"),
    responses=_doc(200, StepStatusView, "the step after the report", 400, 401, 403, 404, 409),
)
async def update_step_status(request: Request[Any, Any, Any], step_id: str, runtime: Runtime) -> Response[bytes]:
    sid = domain.parse_uuid(step_id, "step")
    body = decode_body(await request.body(), StepStatusUpdate)
    if body.logs_s3_key is not None and not (1 <= len(body.logs_s3_key) <= 1024):
        raise InvalidRequest("logs_s3_key must be 1 to 1024 characters", {"field": "logs_s3_key"})
    if body.exit_code is not None and not (-(2**31) <= body.exit_code < 2**31):
        raise InvalidRequest("exit_code must be a 32-bit integer", {"field": "exit_code"})
    report = StepReport(
        id=sid,
        status=body.status,
        exit_code=body.exit_code,
        logs_s3_key=body.logs_s3_key,
        started_at=body.started_at,
        completed_at=body.completed_at,
    )
    view = await _service(runtime).step_status(report)
    _wake_log_indexer(runtime, [view])
    return _json(200, view)


@post(
    "/v1/webhooks/github",
    opt={"public": True},
    status_code=202,
    summary="GitHub webhook (HMAC X-Hub-Signature-256)",
    description="GitHub's JSON payload of a `push`, `pull_request` or `ping` event with its `X-GitHub-Event`, "
    "`X-GitHub-Delivery` and `X-Hub-Signature-256` headers; no bearer token.",
    responses=_doc(201, WebhookResult, "run created", 400, 429)
    | {
        200: response(WebhookResult, "ping, duplicate delivery, existing run or tag recorded"),
        202: response(WebhookResult, "ignored: an event or ref that starts nothing"),
        **errors({401: "missing or wrong `X-Hub-Signature-256`"}),
    },
)
async def github_webhook(request: Request[Any, Any, Any], runtime: Runtime) -> Response[bytes]:
    handler: webhooks.WebhookHandler = runtime.extras[webhooks.HANDLER_KEY]
    status, body = await handler.handle(dict(request.headers), await request.body())
    return _json(status, body)


# --- PUT /v1/tasks/{id}/report: the batched form of the two routes above ------------------------
# Each step in order, then the task's status: the same state machine (``domain.apply_report``),
# one request, one commit. A step reported success/failed while still pending (it finished
# before its running report was due) goes through running first, so it gets both timestamps.
# Any refused transition (409) rolls the whole report back.


def _validate_report(body: TaskReportBody) -> None:
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


def _report_command(task_id: str, body: TaskReportBody) -> TaskReport:
    steps = tuple(
        StepReport(
            id=domain.parse_uuid(s.id, "step"),
            status=s.status,
            exit_code=s.exit_code,
            logs_s3_key=s.logs_s3_key,
            started_at=s.started_at,
            completed_at=s.completed_at,
        )
        for s in body.steps
    )
    return TaskReport(task_id=task_id, steps=steps, status=body.status, error=body.error, through_running=True)


@put(
    "/v1/tasks/{task_id:str}/report",
    opt={"permission": Permission.INTERNAL_STATUS, **internal()},
    summary="Worker report of a task's steps and status in one transaction",
    operation_class=body_operation(TaskReportBody, "the steps' statuses in order, then the task's"),
    responses=_doc(
        200, TaskReportResult, "the task (when reported) and the steps after the report", 400, 401, 403, 404, 409
    ),
)
async def report_task(request: Request[Any, Any, Any], task_id: str, runtime: Runtime) -> Response[bytes]:
    tid = domain.parse_uuid(task_id, "task")
    body = decode_body(await request.body(), TaskReportBody)
    _validate_report(body)
    result = await _service(runtime).report(_report_command(tid, body))
    _wake_log_indexer(runtime, result.steps)
    return _json(200, result)


def _wake_log_indexer(runtime: Runtime, steps: list[StepStatusView]) -> None:
    """Wake the log indexer when the report finished a step with a log (its transaction queued
    the step: search.py). A step without a log (it printed nothing: the worker reports no
    ``logs_s3_key``) has nothing to index. The worker's report does not wait for the indexing."""
    if any(step.status in search.FINAL_STEP and step.logs_s3_key for step in steps):
        indexer = runtime.extras.get(search.INDEXER_KEY)
        if isinstance(indexer, search.LogIndexer):
            indexer.wake()


# --- search (search.py; docs/api-search.md) --------------------------------------------------------


@get(
    "/v1/search/logs",
    opt={"permission": Permission.READ, **strict_query()},
    summary="Full-text search over step logs: matching lines, their numbers and links to the step",
    description=(
        "q: words (websearch syntax: quoted phrases, -word, or). Newest logs first; page with"
        " ?cursor=next_cursor and the same q, repository and since."
    ),
    responses=_doc(200, search.LogResults, "one page of matching lines", 400, 401, 403),
)
async def search_logs(
    runtime: Runtime,
    principal: Principal,
    q: str | None = None,
    repository: str | None = None,
    since: str | None = None,
    limit: str | None = None,
    cursor: str | None = None,
) -> Response[bytes]:
    # A repository-bound token (forge_repository claim) searches its own repository only.
    query = search.parse_log_query(q, repository_filter(principal, repository), since, limit, cursor)
    return _json(200, await search.search_logs(runtime.pool, query))


@get(
    "/v1/search",
    opt={"permission": Permission.READ, **strict_query()},
    summary="Runs and releases by commit prefix, branch, tag, alias, author or error text, newest first",
    description=(
        "`type` (`runs` or `releases`) keeps one kind; without it both, merged newest first, each result"
        " with `type` `run` or `release`. Releases come from the release service (a 503 while it is down)."
        " Page with ?cursor=next_cursor and the same q, type and repository."
    ),
    responses=_doc(200, search.SearchResults, "one page of matching runs and releases", 400, 401, 403, 503),
)
async def search_runs_and_releases(
    runtime: Runtime,
    principal: Principal,
    q: str | None = None,
    type: str | None = None,
    repository: str | None = None,
    limit: str | None = None,
    cursor: str | None = None,
) -> Response[bytes]:
    # A repository-bound token searches its own repository only (and the release service, which
    # gets the same token, checks it again).
    query = search.parse_search(q, type, repository_filter(principal, repository), limit, cursor)
    releases: search.ReleaseSearch = runtime.extras[search.RELEASES_KEY]
    return _json(200, await search.search(runtime.pool, releases, query, principal.token))


ROUTES: list[Any] = [
    create_run,
    list_runs,
    get_run,
    run_events,
    platform_events,
    step_logs,
    cancel_run,
    cancel_runs,
    update_task_status,
    update_step_status,
    report_task,
    github_webhook,
    search_logs,
    search_runs_and_releases,
]
