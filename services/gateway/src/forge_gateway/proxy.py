"""The ``/v1`` reverse proxy: a lean raw-ASGI path, no framework routing on the hot path.

Per request: authenticate the bearer token (cached verification), count it against the user's
sliding window, pick the upstream by the first path segment, enforce the body limit while
streaming, forward over a pooled keep-alive aiohttp session, stream the answer back. Every
answer the gateway makes itself is the platform's error envelope.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from yarl import URL

from forge_common import metrics
from forge_common.auth import Principal, TokenVerifier
from forge_common.errors import (
    BadGateway,
    ForgeError,
    GatewayTimeout,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from forge_common.tracing import extract, inject

from .accesslog import AccessLog
from .ratelimit import Decision, SlidingWindowLimiter
from .settings import Settings

__all__ = ["ROUTES", "WEBHOOK_PATH", "Proxy", "Upstream"]

log = structlog.get_logger("forge_gateway")
_tracer = trace.get_tracer("forge.gateway")

# First path segment under /v1 -> upstream service.
ROUTES: dict[str, str] = {
    "runs": "pipeline",
    "tasks": "pipeline",
    "steps": "pipeline",
    "webhooks": "pipeline",
    "releases": "release",
    "deployments": "deployment",
    "approvals": "approval",
}
# Authenticated by its HMAC signature in the pipeline service, not by a bearer token.
WEBHOOK_PATH = "/v1/webhooks/github"

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the gateway rewrites itself (or lets aiohttp set) instead of copying.
_REQUEST_SPECIAL = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"traceparent",
    b"tracestate",
}
# Response headers not copied back: hop-by-hop, and what uvicorn / the gateway add itself.
_RESPONSE_DROP = _HOP_BY_HOP | {b"server", b"date", b"x-request-id"}
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Bodies up to this size are read whole before forwarding (one write upstream, lowest latency);
# larger ones stream through while being counted.
_BUFFER_BELOW = 256 * 1024
# Responses of known length up to this size are relayed in one write; larger ones in chunks of
# this size; responses of unknown length (a streamed log) as the bytes arrive.
_RESPONSE_CHUNK = 1024 * 1024
_JSON = (b"content-type", b"application/json")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


def child_traceparent(incoming: str | None) -> tuple[str, str, bool]:
    """``(trace_id, traceparent for the upstream, whether the incoming one was valid)``.

    The W3C rules without the SDK: continue a valid incoming trace with a new span id of the
    gateway's hop, else start a trace. (With an exporter configured, real SDK spans are used.)
    """
    if incoming:
        m = _TRACEPARENT.match(incoming.strip().lower())
        if m and m[1] != _NO_TRACE and m[2] != _NO_SPAN:
            span = f"{random.getrandbits(64) or 1:016x}"
            return m[1], f"00-{m[1]}-{span}-{m[3]}", True
    trace_id = f"{random.getrandbits(128) or 1:032x}"
    return trace_id, f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-01", False


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class _BodyStream:
    """The request body as an async iterator for aiohttp, counted against the limit as it flows."""

    def __init__(self, receive: Any, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self.client_gone = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                self.received += len(chunk)
                if self.received > self.limit:
                    self.exceeded = True
                    raise _BodyTooLarge
                yield chunk


class Upstream:
    def __init__(self, name: str, base_url: str) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def open(self, settings: Settings) -> None:
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_pool_size,
            keepalive_timeout=settings.upstream_keepalive,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.upstream_connect_timeout, sock_read=settings.upstream_timeout
            ),
            auto_decompress=False,  # bytes pass through untouched, Content-Encoding stays true
            cookie_jar=aiohttp.DummyCookieJar(),  # never remember one user's cookies for another
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "gateway not started"
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def healthy(self) -> str:
        try:
            async with self.session.get(self.base_url + "/healthz", timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                await resp.read()
                return "ok" if resp.status == 200 else f"unavailable: status {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"unavailable: {type(exc).__name__}"


class _Metrics:
    """Pre-resolved Prometheus children; ``labels()`` on every request would cost a lock each."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        counters = self._requests.get(key)
        if counters is None:
            s = str(status)
            errors = metrics.REQUEST_ERRORS.labels("gateway", method, route, s) if status >= 400 else None
            counters = self._requests[key] = (metrics.REQUESTS.labels("gateway", method, route, s), errors)
        counters[0].inc()
        if counters[1] is not None:
            counters[1].inc()
        hist = self._latency.get((method, route))
        if hist is None:
            hist = self._latency[(method, route)] = metrics.REQUEST_LATENCY.labels("gateway", method, route)
        hist.observe(elapsed)


class Proxy:
    """The ASGI callable for every ``/v1`` HTTP request."""

    def __init__(self, settings: Settings, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.verifier = verifier
        self.limiter = SlidingWindowLimiter(settings.rate_limit, settings.rate_limit_window)
        self.upstreams = {
            "pipeline": Upstream("pipeline", settings.pipeline_url),
            "release": Upstream("release", settings.release_url),
            "deployment": Upstream("deployment", settings.deployment_url),
            "approval": Upstream("approval", settings.approval_url),
        }
        self.routes = {segment: self.upstreams[name] for segment, name in ROUTES.items()}
        self.max_body = settings.max_body_bytes
        self.access_log = AccessLog(
            settings.access_log and settings.log_level.lower() in ("debug", "info"), settings.log_format
        )
        self.sdk_spans = settings.otel_exporter != "none"
        self._metrics = _Metrics()

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            upstream.open(self.settings)

    async def stop(self) -> None:
        self.access_log.flush()
        for upstream in self.upstreams.values():
            await upstream.close()

    async def readiness(self) -> dict[str, str]:
        names = list(self.upstreams)
        results = await asyncio.gather(*(self.upstreams[n].healthy() for n in names))
        return dict(zip(names, results, strict=True))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]

        authorization = content_length = connection = request_id = None
        forwarded_for = traceparent = tracestate = None
        chunked = False
        headers: list[tuple[str, str]] = []
        for name, value in scope["headers"]:
            if name not in _REQUEST_SPECIAL:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                headers.append((name.decode("latin-1"), value.decode("latin-1")))
            elif name == b"content-length":
                content_length = value
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value
        if connection is not None:
            # Headers named in Connection are hop-by-hop for this one hop.
            named = {token.strip().lower().decode("latin-1") for token in connection.split(b",")}
            headers = [(k, v) for k, v in headers if k not in named]
        if not request_id or len(request_id) > 200:
            # Not a secret, just unique: no getrandom() syscall per request as uuid4() makes.
            request_id = f"{random.getrandbits(128):032x}"
        rid = request_id.encode("latin-1")

        segment = path[4:].partition("/")[0] if path.startswith("/v1/") else ""
        upstream = self.routes.get(segment)
        route = f"/v1/{segment}" if upstream is not None else "unmatched"

        span: trace.Span | None = None
        if self.sdk_spans:
            carrier: dict[str, str] = {}
            if traceparent:
                carrier["traceparent"] = traceparent
                if tracestate:
                    carrier["tracestate"] = tracestate
            span = _tracer.start_span(
                f"{method} {route}", context=extract(carrier) if carrier else None, kind=SpanKind.SERVER
            )
            trace_headers: dict[str, str] = {}
            inject(trace_headers, trace.set_span_in_context(span))
            trace_id = format(span.get_span_context().trace_id, "032x")
        else:
            trace_id, upstream_traceparent, continued = child_traceparent(traceparent)
            trace_headers = {"traceparent": upstream_traceparent}
            if continued and tracestate:
                trace_headers["tracestate"] = tracestate
        status = 500
        principal: Principal | None = None
        decision: Decision | None = None
        try:
            if path != WEBHOOK_PATH:
                principal = await self.verifier.verify_header(authorization)
                decision = self.limiter.hit(principal.subject)
                if not decision.allowed:
                    raise RateLimited(
                        f"rate limit of {decision.limit} requests per {self.settings.rate_limit_window:g} seconds exceeded",
                        {"limit": decision.limit, "retry_after": decision.retry_after},
                        {"Retry-After": str(decision.retry_after)},
                    )
            if upstream is None:
                raise NotFound("no API route matches this path", {"path": path})

            data: bytes | _BodyStream | None = None
            if content_length is not None:
                try:
                    size = int(content_length)
                except ValueError:
                    raise InvalidRequest("Content-Length is not a number", {"field": "Content-Length"}) from None
                if size > self.max_body:
                    raise _too_large(self.max_body, close=size > 4 * self.max_body)
                if 0 < size <= _BUFFER_BELOW:
                    data = await _read_body(receive)
                    if data is None:
                        status = 499  # the client went away; nothing to answer
                        return
                elif size > _BUFFER_BELOW:
                    data = _BodyStream(receive, self.max_body)
                    headers.append(("Content-Length", str(size)))
            elif chunked:
                data = _BodyStream(receive, self.max_body)

            client = scope.get("client")
            client_ip = client[0] if client else ""
            headers.append(("X-Request-Id", request_id))
            if client_ip:
                headers.append(("X-Forwarded-For", f"{forwarded_for}, {client_ip}" if forwarded_for else client_ip))
            for name, value in scope["headers"]:
                if name == b"host":
                    headers.append(("X-Forwarded-Host", value.decode("latin-1")))
                    break
            headers.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
            headers.extend(trace_headers.items())

            raw_path = scope.get("raw_path")
            target = raw_path.decode("latin-1") if raw_path else path
            query = scope.get("query_string")
            if query:
                target = f"{target}?{query.decode('latin-1')}"
            url = URL(upstream.base_url + target, encoded=True)
            extra = decision.headers() if decision is not None else []
            extra.append((b"x-request-id", rid))
            status = await self._forward(upstream, method, url, headers, data, send, extra)
        except ForgeError as exc:
            status = exc.status
            await _send_error(send, exc, rid, decision)
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.observe(method, route, status, elapsed)
            if span is not None:
                span.set_attribute("http.response.status_code", status)
                span.end()
            self.access_log.request(
                method=method,
                path=path,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                upstream=upstream.name if upstream is not None else None,
                user=principal.identity if principal is not None else None,
                request_id=request_id,
                trace_id=trace_id,
            )

    async def _forward(
        self,
        upstream: Upstream,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        data: bytes | _BodyStream | None,
        send: Any,
        extra: list[tuple[bytes, bytes]],
    ) -> int:
        retry = method in _IDEMPOTENT and not isinstance(data, _BodyStream)
        while True:
            try:
                async with upstream.session.request(
                    method, url, headers=headers, data=data, allow_redirects=False
                ) as resp:
                    return await self._relay(resp, method, send, extra)
            except TimeoutError:
                raise GatewayTimeout(
                    f"the {upstream.name} service did not answer within {self.settings.upstream_timeout:g} seconds",
                    {"service": upstream.name},
                ) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if isinstance(data, _BodyStream):
                    if data.exceeded:
                        raise _too_large(self.max_body) from None
                    if data.client_gone:
                        return 499
                # A pooled keep-alive connection the upstream had just closed: one retry is safe
                # for idempotent requests; a refused connection is not retried.
                if retry and not isinstance(exc, aiohttp.ClientConnectorError):
                    retry = False
                    continue
                raise BadGateway(
                    f"the {upstream.name} service is unavailable",
                    {"service": upstream.name, "reason": type(exc).__name__},
                ) from None
            except aiohttp.ClientError as exc:
                if isinstance(data, _BodyStream) and data.exceeded:
                    raise _too_large(self.max_body) from None
                raise BadGateway(
                    f"the {upstream.name} service sent an invalid answer",
                    {"service": upstream.name, "reason": type(exc).__name__},
                ) from None

    async def _relay(
        self, resp: aiohttp.ClientResponse, method: str, send: Any, extra: list[tuple[bytes, bytes]]
    ) -> int:
        out = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in _RESPONSE_DROP]
        out.extend(extra)
        length = resp.content_length
        if method == "HEAD" or (length is not None and length <= _RESPONSE_CHUNK):
            body = await resp.read()
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            await send({"type": "http.response.body", "body": body})
            return resp.status
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        chunks = resp.content.iter_any() if length is None else resp.content.iter_chunked(_RESPONSE_CHUNK)
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are out: the client learns of the failure from the cut connection (uvicorn
            # closes it because the response was never completed).
            log.warning("gateway.upstream_stream_broken", status=resp.status, error=type(exc).__name__)
            return resp.status
        await send({"type": "http.response.body", "body": b""})
        return resp.status


def _too_large(limit: int, close: bool = False) -> PayloadTooLarge:
    # The connection normally stays open: uvicorn reads and discards the rest of the body (never
    # buffering it), so the client, still sending, gets to read the 413 instead of a reset.
    # Only absurd declared sizes are cut off at once.
    return PayloadTooLarge(
        f"request body exceeds the limit of {limit} bytes", {"limit": limit}, {"Connection": "close"} if close else None
    )


async def _read_body(receive: Any) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_error(send: Any, exc: ForgeError, rid: bytes, decision: Decision | None) -> None:
    body = exc.body()
    headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"x-request-id", rid)]
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items())
    if decision is not None:
        headers.extend(decision.headers())
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
