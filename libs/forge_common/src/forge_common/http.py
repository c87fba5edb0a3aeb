"""The Litestar application shell every service shares.

:func:`build_app` wires the error envelope, authentication and role guards, request ids,
tracing, metrics, health endpoints and the runtime lifecycle around a service's own routes.

:func:`decode_body` and :func:`parse_page` are the one way a route reads a JSON body and
``limit``/``offset``: every client mistake becomes the same ``400 invalid_request`` envelope
whose ``details.field`` names what to fix (``body`` when the body as a whole is wrong).
:func:`strict_query` makes a route refuse the query parameters it does not declare the same way.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
import nats.errors
import nats.js.errors
import psycopg
import structlog
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import metrics
from .auth import Permission, Principal
from .errors import ForgeError, InvalidRequest, error_body, unavailable
from .runtime import Runtime
from .tracing import configure_tracing, extract, flush_tracing

__all__ = [
    "DEFAULT_LIMIT",
    "DEPENDENCY_ERRORS",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "AppSpec",
    "Page",
    "build_app",
    "decode_body",
    "parse_page",
    "principal_of",
    "runtime_of",
    "strict_query",
]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("forge.http")

# NATS errors that mean "the server cannot be reached or did not answer", not a bad request.
_NATS_UNAVAILABLE: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
# Every exception that means "a dependency is down" (answered 503 by :data:`EXCEPTION_HANDLERS`).
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, *_NATS_UNAVAILABLE)

_STATUS_CODES = {
    400: "invalid_request",
    401: "authentication_failed",
    403: "authorization_failed",
    404: "resource_not_found",
    405: "method_not_allowed",
    409: "resource_conflict",
    413: "payload_too_large",
    429: "rate_limited",
}


T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Deep offsets make Postgres walk and discard every row before them; past ten million a client
# is scanning, not paging, and should filter instead.
MAX_OFFSET = 10_000_000
_BODY = "body"
# msgspec's ValidationError carries no structured path, only its documented message form
# "<problem> - at `$.a.b[0].c`"; a missing field is named in the problem, under that path.
_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]+)`")
_DIGITS = re.compile(r"-?[0-9]{1,20}")


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """A validated ``limit``/``offset`` pair."""

    limit: int
    offset: int


def decode_body(body: bytes, typ: type[T]) -> T:
    """Decode a JSON request body into ``typ``, or raise a 400 naming the field at fault."""
    if not body.strip():
        raise InvalidRequest("request body must be a JSON object", {"field": _BODY})
    try:
        value = msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        # msgspec stops at the first wrong value, before reading the rest: `{"a": 1,}` into a
        # Struct that forbids unknown fields fails on `a`, yet the client's mistake is the syntax.
        _check_syntax(body)
        raise _invalid_body(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", {"field": _BODY}) from None
    except RecursionError:
        raise _too_deep() from None
    if b"\\u0000" in body.lower():
        _refuse_nul(msgspec.json.decode(body), "")
    return value


def _refuse_nul(value: object, path: str) -> None:
    """400 naming the first string (or key) holding ``\\u0000``: valid JSON, but no text column
    of Postgres can hold it, so it would otherwise fail deep in a store as a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            field = path.lstrip(".") or _BODY
            raise InvalidRequest(f"`{field}` must not contain the NUL character (\\u0000)", {"field": field})
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, path)
            _refuse_nul(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nul(item, f"{path}[{index}]")


def _check_syntax(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", {"field": _BODY}) from None
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> InvalidRequest:
    # msgspec raises RecursionError for arrays or objects nested past the interpreter's
    # recursion limit (`[[[[…]]]]` a few thousand deep): a hostile body, not a platform fault.
    return InvalidRequest("request body nests arrays or objects too deeply", {"field": _BODY})


def _invalid_body(problem: str) -> InvalidRequest:
    """The 400 for one msgspec validation message (from :func:`decode_body` or Litestar)."""
    m = _AT.match(problem)
    text = m.group("problem") if m else problem
    path = (m.group("path") or "") if m else ""
    if missing := _MISSING.search(text):
        field = f"{path}.{missing.group('name')}".lstrip(".")
        return InvalidRequest(f"missing required field `{field}`", {"field": field})
    if unknown := _UNKNOWN.search(text):
        # Named like a missing field: the client's fix is to drop exactly that one.
        field = f"{path}.{unknown.group('name')}".lstrip(".")
        return InvalidRequest(f"unknown field `{field}`", {"field": field})
    field = path.lstrip(".") or _BODY
    if field == _BODY:
        if text.startswith("Expected `object`"):
            text = f"request body must be a JSON object ({text})"
        return InvalidRequest(text, {"field": _BODY})
    return InvalidRequest(f"{text} at `{field}`", {"field": field})


def parse_page(limit: str | None, offset: str | None) -> Page:
    """``limit`` (1..MAX_LIMIT, default 20) and ``offset`` (0..MAX_OFFSET) from the raw query.

    Routes declare both query parameters as ``str | None`` so that this, not Litestar's lax
    coercion, judges them.
    Absent or empty means the default. Only plain ASCII digits count as a number: Python's
    ``int()`` would also take `` 5``, ``5_0`` and non-ASCII digits, which no client means.
    """
    return Page(
        limit=_bounded("limit", limit, DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_bounded("offset", offset, 0, 0, MAX_OFFSET),
    )


def _bounded(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be an integer between {low} and {high}, got {raw[:40]!r}",
            {"field": name},
        )
    return value


_STRICT_QUERY = "strict_query"


def strict_query() -> dict[str, Any]:
    """Route ``opt`` entry (every list endpoint has it): a query parameter the handler does not
    declare is a 400 naming it. Ignoring it would answer a misspelt filter (``?brnach=main``)
    with the unfiltered list, and the client could not tell."""
    return {_STRICT_QUERY: True}


def _declared_queries(app: Litestar) -> dict[int, frozenset[str]]:
    """The query parameters of each strict route handler (by ``id``): its own and its
    dependencies', exactly as Litestar resolved them when it built the routes."""
    declared: dict[int, frozenset[str]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler, kwargs_model in route.route_handler_map.values():
            if handler.opt.get(_STRICT_QUERY):
                names = {p.field_alias for p in kwargs_model.expected_query_params}
                declared[id(handler)] = declared.get(id(handler), frozenset()) | names
    return declared


async def query_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """400 for the first query parameter a :func:`strict_query` route does not declare (after
    authentication: who may not call the route learns nothing about its parameters)."""
    # ``handler`` is a copy Litestar makes for each guard; the scope holds the routed instance.
    declared: frozenset[str] | None = connection.app.state.declared_queries.get(id(connection.route_handler))
    if declared is None:
        return
    for name in connection.query_params:
        if name not in declared:
            shown = f"`{name[:100]}`" if name else "without a name"
            raise InvalidRequest(
                f"unknown query parameter {shown}; this endpoint takes {', '.join(sorted(declared))}",
                {"field": name[:100], "allowed": sorted(declared)},
            )


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _forge_error(_: Request[Any, Any, Any], exc: ForgeError) -> Response[bytes]:
    return _json(exc.status, exc.body(), exc.headers)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """Litestar's own validation (query, path and ``data`` parameters) in the same 400 shape."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    key = str(first.get("key") or "")
    message = str(first.get("message") or exc.detail or "invalid request")
    if first.get("source") != "body":
        error = InvalidRequest(message, {"field": key} if key else {})
    elif message.strip("'") == "data":  # Litestar's KeyError text for an empty body
        error = InvalidRequest("request body must be a JSON object", {"field": _BODY})
    else:
        path = "" if key == "data" else key  # "data" is the handler's parameter, not a field
        error = _invalid_body(f"{message} - at `$.{path}`" if path else message)
    return _json(error.status, error.body())


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500:
        log.error("http.server_error", status=status, detail=exc.detail)
        return _json(status, error_body("internal_error", "internal platform error"))
    code = _STATUS_CODES.get(status, "invalid_request")
    message = exc.detail
    if isinstance(exc, NotFoundException):
        message = "resource not found" if exc.detail in ("", "Not Found") else exc.detail
    if isinstance(exc, MethodNotAllowedException):
        message = "method not allowed on this resource"
    details = {"field": _BODY} if isinstance(exc.__cause__, SerializationException) else None
    headers = dict(exc.headers or {})
    return _json(status, error_body(code, message or code.replace("_", " "), details), headers)


def _dependency_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A database or NATS outage (refused or dropped connection, pool wait exhausted): the
    caller gets a fast 503 with Retry-After, the operator a log line naming the dependency."""
    dependency = "database" if isinstance(exc, psycopg.OperationalError) else "NATS"
    log.warning("http.dependency_unavailable", path=request.url.path, dependency=dependency, error=str(exc)[:300])
    error = unavailable(dependency)
    return _json(error.status, error.body(), error.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("http.unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return _json(500, error_body("internal_error", "internal platform error"))


EXCEPTION_HANDLERS: dict[Any, Callable[..., Response[bytes]]] = {
    ForgeError: _forge_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    # PoolTimeout and the errors of a connection that breaks mid-query are OperationalErrors.
    psycopg.OperationalError: _dependency_error,
    **dict.fromkeys(_NATS_UNAVAILABLE, _dependency_error),
    Exception: _internal_error,
}


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    rt: Runtime = connection.app.state.runtime
    return rt


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal: Principal | None = connection.scope.get("state", {}).get("principal")
    if principal is None:
        raise RuntimeError("route has no authentication guard")
    return principal


async def auth_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Authenticate the bearer token, then check the route's required permission.

    Every route under /v1 declares ``opt={"permission": Permission.X}``, or ``{"public": True}``
    when another mechanism protects it (the GitHub webhook's HMAC).
    """
    if handler.opt.get("public"):
        return
    permission = handler.opt.get("permission")
    if permission is None and set(getattr(handler, "http_methods", ())) == {"OPTIONS"}:
        # Litestar's own OPTIONS answer (204 with ``Allow``): it tells what the path supports,
        # so it is for whoever may read, like a GET.
        permission = Permission.READ
    if not isinstance(permission, Permission):
        raise RuntimeError(f"route {handler} declares no permission")
    rt = runtime_of(connection)
    principal = await rt.verifier.verify_headers(connection.headers.getall("authorization", []))
    from .auth import require

    require(principal, permission)
    connection.scope.setdefault("state", {})["principal"] = principal


async def _provide_principal(request: Request[Any, Any, Any]) -> Principal:
    return principal_of(request)


async def _provide_runtime(request: Request[Any, Any, Any]) -> Runtime:
    return runtime_of(request)


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    checks = await runtime_of(request).readiness()
    ok = all(v == "ok" for v in checks.values())
    return Response({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@get("/metrics", include_in_schema=False)
async def metrics_endpoint() -> Response[bytes]:
    return Response(await metrics.collect(), media_type=metrics.CONTENT_TYPE_LATEST)


class ObservabilityMiddleware:
    """Request id, server span, access log and metrics around every HTTP request."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        method: str = scope["method"]  # type: ignore[typeddict-item]
        path = scope["path"]
        status_holder = [500]
        started = time.perf_counter()
        ctx = extract(headers)
        token = otel_context.attach(ctx)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        rid = request_id.encode("latin-1")

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        try:
            with _tracer.start_as_current_span(f"{method} {path}", kind=SpanKind.SERVER) as span:
                span.set_attribute("http.request.method", method)
                span.set_attribute("url.path", path)
                await self.app(scope, receive, _send)
                span.set_attribute("http.response.status_code", status_holder[0])
                if template := scope.get("path_template"):
                    span.update_name(f"{method} {template}")  # bounded span names
                    span.set_attribute("http.route", template)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or ("unmatched" if status_holder[0] == 404 else path)
            status = str(status_holder[0])
            metrics.REQUESTS.labels(self.service, method, route, status).inc()
            metrics.REQUEST_LATENCY.labels(self.service, method, route).observe(elapsed)
            if status_holder[0] >= 400:
                metrics.REQUEST_ERRORS.labels(self.service, method, route, status).inc()
            if path not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "http.request",
                    method=method,
                    path=path,
                    status=status_holder[0],
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")
            otel_context.detach(token)


class RejectNul:
    """400 for a request whose path or query holds a NUL character (``%00``).

    No identifier, filter or search term of the API may hold one, and Postgres text cannot: let
    through, it fails in psycopg deep inside a handler as a 500. ``details.field`` names the
    query parameter, or ``path``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # type: ignore[comparison-overlap]
            field = _nul_field(scope["path"], scope.get("query_string", b""))
            if field is not None:
                body = error_body(
                    "invalid_request", f"`{field}` must not contain the NUL character (%00)", {"field": field}
                )
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                }
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
        await self.app(scope, receive, send)


def _nul_field(path: str, query: bytes) -> str | None:
    if "\x00" in path:
        return "path"
    if b"%00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return name.replace("\x00", "") or "query"
    return None


class AppSpec:
    def __init__(
        self,
        *,
        service: str,
        settings: Any,
        routes: Sequence[Any],
        schema: str | None = None,
        migrations: str | None = None,
        on_startup: Sequence[Callable[[Runtime], Awaitable[None]]] = (),
        on_shutdown: Sequence[Callable[[Runtime], Awaitable[None]]] = (),
        description: str = "",
    ) -> None:
        self.service = service
        self.settings = settings
        self.routes = routes
        self.schema = schema
        self.migrations = migrations
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.description = description


def build_app(spec: AppSpec) -> Litestar:
    configure_tracing(spec.service, spec.settings.otel_exporter)
    runtime = Runtime(spec.service, spec.settings, spec.schema, spec.migrations)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> Any:
        app.state.runtime = runtime
        await runtime.start()
        for hook in spec.on_startup:
            await hook(runtime)
        try:
            yield
        finally:
            for hook in reversed(spec.on_shutdown):
                try:
                    await hook(runtime)
                except Exception:
                    log.exception("service.shutdown_hook_failed")
            await runtime.stop()
            log.info("service.stopped")
            flush_tracing()

    v1 = Router(path="/", route_handlers=list(spec.routes), guards=[auth_guard, query_guard])
    app = Litestar(
        route_handlers=[healthz, readyz, metrics_endpoint, v1],
        exception_handlers=EXCEPTION_HANDLERS,
        dependencies={"principal": Provide(_provide_principal), "runtime": Provide(_provide_runtime)},
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title=f"Forge {spec.service} service",
            version="1.0.0",
            description=spec.description or None,
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        logging_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    app.state.declared_queries = _declared_queries(app)
    app.asgi_handler = ObservabilityMiddleware(RejectNul(app.asgi_handler), spec.service)
    return app
