"""The ``/v1`` reverse proxy: a lean raw-ASGI path, no framework routing on the hot path.

Per request: authenticate the bearer token (cached verification), count it against the user's
sliding window, pick the upstream by the first path segment, enforce the body limit while
streaming, forward over a pooled keep-alive connection (:mod:`forge_gateway.upstream`), stream
the answer back. A few operations (:data:`LOCAL`: ``GET /v1/me``) the proxy answers itself after
the same authentication and limits, with the same metrics, access log and trace. Every
error the gateway makes itself is the platform's error envelope.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from forge_common import metrics
from forge_common.auth import Principal, TokenVerifier
from forge_common.errors import (
    AuthenticationFailed,
    BadGateway,
    ForgeError,
    GatewayTimeout,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
)
from forge_common.tracing import extract, inject

from . import me, response_limit
from .accesslog import AccessLog
from .ratelimit import Decision, SlidingWindowLimiter
from .settings import Settings
from .upstream import Connection, Upstream, UpstreamBusy, UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from .versioning import API_VERSIONS, load_deprecations

__all__ = ["LOCAL", "ROUTES", "WEBHOOK_PATH", "Proxy"]

log = structlog.get_logger("forge_gateway")
_tracer = trace.get_tracer("forge.gateway")

# First path segment under /v1 -> upstream service (every version's table: versioning.py).
ROUTES: dict[str, str] = API_VERSIONS["v1"]
# Authenticated by its HMAC signature in the pipeline service, not by a bearer token.
WEBHOOK_PATH = "/v1/webhooks/github"
# Exact paths the gateway answers itself (GET and HEAD), from the authenticated principal alone:
# the body of the 200. Their metrics route is the path itself.
LOCAL: dict[str, Callable[[Principal], bytes]] = {me.ME_PATH: me.answer}
_LOCAL_METHODS = frozenset({"GET", "HEAD"})
_LOCAL_ALLOW = {"Allow": "GET, HEAD"}

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
# Request headers the gateway rewrites or sets itself instead of copying them.
_REQUEST_SPECIAL = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"traceparent",
    b"tracestate",
    b"expect",  # the gateway has accepted the body already; 100-continue is between it and the client
}
# Response headers not copied back: hop-by-hop, and what uvicorn / the gateway add itself.
_RESPONSE_DROP = _HOP_BY_HOP | {b"server", b"date", b"x-request-id"}
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_CRLF = b"\r\n"
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


class _ClientTooSlow(Exception):
    """Deliberately no TimeoutError: those mean the *upstream* was too slow (504)."""


class _ClientReader:
    """``receive`` bounded in time: a client that stalls (no bytes for ``idle`` seconds) or
    trickles (body not complete within ``total``) cannot hold the request open forever."""

    def __init__(self, receive: Any, idle: float, total: float) -> None:
        self.receive = receive
        self.idle = idle
        self.total = total
        self.deadline = asyncio.get_running_loop().time() + total

    async def __call__(self) -> Any:
        when = min(asyncio.get_running_loop().time() + self.idle, self.deadline)
        try:
            async with asyncio.timeout_at(when):
                return await self.receive()
        except TimeoutError:
            raise _ClientTooSlow from None

    def error(self) -> RequestTimeout:
        return RequestTimeout(
            "the request body did not arrive in time",
            {"idle_timeout": self.idle, "body_timeout": self.total},
        )


class _BodyStream:
    """The request body as an async iterator, counted against the limit as it flows."""

    def __init__(self, receive: _ClientReader, limit: int, chunked: bool = False) -> None:
        self.receive = receive
        self.chunked = chunked
        self.limit = limit
        self.received = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                self.received += len(chunk)
                if self.received > self.limit:
                    raise _BodyTooLarge
                yield chunk


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


class _Incoming:
    """What the gateway reads from the client's request head. The upstream request head is
    built as bytes straight from the client's (already validated) header bytes: no decoding
    and re-encoding per header; ``lines`` are the headers copied as they are."""

    __slots__ = (
        "authorizations",
        "chunked",
        "content_length",
        "forwarded_for",
        "host",
        "lines",
        "request_id",
        "traceparent",
        "tracestate",
    )

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.authorizations: list[str] = []
        self.content_length: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.host: bytes | None = None
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        self.chunked = False
        self.lines: list[bytes] = []
        request_id = connection = None
        for name, value in headers:
            if name not in _REQUEST_SPECIAL:
                if name == b"authorization":
                    self.authorizations.append(value.decode("latin-1"))
                self.lines.append(name + b": " + value + _CRLF)
            elif name == b"content-length":
                self.content_length = value
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"traceparent":
                self.traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                self.tracestate = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                self.forwarded_for = value
            elif name == b"host":
                self.host = value
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value
        if connection is not None:
            # Headers named in Connection are hop-by-hop for this one hop.
            named = {token.strip().lower() for token in connection.split(b",")}
            self.lines = [line for line in self.lines if line.partition(b":")[0] not in named]
        if not request_id or len(request_id) > 200:
            # Not a secret, just unique: no getrandom() syscall per request as uuid4() makes.
            request_id = f"{random.getrandbits(128):032x}"
        self.request_id: str = request_id


class _Exchange:
    """One request's outcome so far, read when it ends (limits released, metrics, access log)."""

    __slots__ = ("decision", "expired", "principal", "status", "stream_open")

    def __init__(self) -> None:
        self.status = 500
        self.principal: Principal | None = None
        self.decision: Decision | None = None
        self.stream_open = False
        # A stream the gateway ended because the token that opened it expired (_relay_chunks).
        self.expired = False


class Proxy:
    """The ASGI callable for every ``/v1`` HTTP request."""

    def __init__(self, settings: Settings, verifier: TokenVerifier, sdk_spans: bool = False) -> None:
        self.settings = settings
        self.verifier = verifier
        self.limiter = SlidingWindowLimiter(settings.rate_limit, settings.rate_limit_window)
        self.upstreams = {
            "pipeline": Upstream("pipeline", settings.pipeline_url),
            "release": Upstream("release", settings.release_url),
            "deployment": Upstream("deployment", settings.deployment_url),
            "approval": Upstream("approval", settings.approval_url),
        }
        self.routes = {
            version: {segment: self.upstreams[name] for segment, name in table.items()}
            for version, table in API_VERSIONS.items()
        }
        self.deprecations = load_deprecations(settings.deprecations)
        self.max_body = settings.max_body_bytes
        self.access_log = AccessLog(
            settings.access_log and settings.log_level.lower() in ("debug", "info"), settings.log_format
        )
        # Real SDK spans only when they are exported (create_app knows); otherwise the W3C rules
        # are applied by hand (cheaper per request) and the trace still continues upstream.
        self.sdk_spans = sdk_spans
        self._metrics = _Metrics()
        self._in_flight: dict[str, int] = {}  # per user (token sub)
        self._streams: dict[str, int] = {}  # open streams per user
        self.started = False

    async def start(self) -> None:
        s = self.settings
        for upstream in self.upstreams.values():
            upstream.open(
                s.upstream_pool_size,
                s.upstream_connect_timeout,
                s.upstream_keepalive,
                stream_slots=s.upstream_stream_slots,
                slot_wait=s.upstream_slot_wait,
            )
        self.started = True

    async def stop(self) -> None:
        self.started = False
        self.access_log.flush()
        for upstream in self.upstreams.values():
            await upstream.close()

    def admit(self, principal: Principal) -> Decision:
        """The per-user limits, before anything is forwarded: concurrent requests first (a refusal
        there does not use up the rate window), then the sliding window. An allowed decision
        counts the request as in flight until :meth:`leave`."""
        cap = self.settings.user_max_concurrent
        if self._in_flight.get(principal.subject, 0) >= cap:
            raise RateLimited(
                f"more than {cap} concurrent requests from this user",
                {"concurrent_limit": cap, "retry_after": 1},
                {"Retry-After": "1"},
            )
        decision = self.limiter.hit(principal.subject)
        if decision.allowed:
            self._in_flight[principal.subject] = self._in_flight.get(principal.subject, 0) + 1
        return decision

    def open_stream(self, subject: str) -> None:
        """Count one more open stream of this user, or refuse it (429) at the cap."""
        cap = self.settings.user_max_streams
        if self._streams.get(subject, 0) >= cap:
            raise RateLimited(
                f"more than {cap} open streams from this user; close one first",
                {"stream_limit": cap, "retry_after": 5},
                {"Retry-After": "5"},
            )
        self._streams[subject] = self._streams.get(subject, 0) + 1

    def close_stream(self, subject: str) -> None:
        left = self._streams.pop(subject, 1) - 1
        if left > 0:
            self._streams[subject] = left

    def leave(self, subject: str) -> None:
        left = self._in_flight.pop(subject, 1) - 1
        if left > 0:
            self._in_flight[subject] = left

    async def readiness(self) -> dict[str, str]:
        names = list(self.upstreams)
        results = await asyncio.gather(*(self.upstreams[n].healthy() for n in names))
        return dict(zip(names, results, strict=True))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        incoming = _Incoming(scope["headers"])
        rid = incoming.request_id.encode("latin-1")
        version, _, rest = path[1:].partition("/")
        segment = rest.partition("/")[0]
        routes = self.routes.get(version)
        upstream = routes.get(segment) if routes is not None else None
        local = LOCAL.get(path) if upstream is None else None
        if upstream is not None:
            route, served_by = f"/{version}/{segment}", upstream.name
        elif local is not None:
            route, served_by = path, "gateway"
        else:
            route, served_by = "unmatched", None
        span, trace_headers, trace_id = self._trace(method, route, incoming)
        x = _Exchange()
        reader = _ClientReader(receive, self.settings.client_idle_timeout, self.settings.client_body_timeout)
        stream = response_limit.is_stream_request(method, path, scope.get("query_string", b""))
        try:
            if path != WEBHOOK_PATH:
                await self._authorize(x, incoming.authorizations)
            if local is not None:
                x.status = await self._answer_locally(local, method, path, x, rid, send)
                return
            if upstream is None:
                raise NotFound("no API route matches this path", {"path": path})
            if stream and x.principal is not None:
                self.open_stream(x.principal.subject)
                x.stream_open = True
            data = await self._request_body(reader, method, incoming)
            head = _upstream_head(scope, method, path, upstream, incoming, rid, trace_headers)
            extra = x.decision.headers() if x.decision is not None else []
            extra.append((b"x-request-id", rid))
            extra.extend(self.deprecations.headers(method, path))
            x.status = await self._forward(
                upstream, method, head, data, send, extra, x, path, receive if stream else None
            )
            if x.expired:
                assert x.principal is not None
                log.info(
                    "gateway.stream_token_expired",
                    path=path,
                    user=x.principal.identity,
                    request_id=incoming.request_id,
                    expires_at=x.principal.expires_at,
                )
        except _ClientGone:
            x.status = 499  # the client went away before its body arrived; nothing to answer
        except _ClientTooSlow:
            error = reader.error()
            x.status = error.status
            await _send_error(send, error, rid, x.decision)
        except ForgeError as exc:
            x.status = exc.status
            await _send_error(send, exc, rid, x.decision)
        finally:
            self._release(x)
            elapsed = time.perf_counter() - started
            self._metrics.observe(method, route, x.status, elapsed)
            if span is not None:
                span.set_attribute("http.response.status_code", x.status)
                span.end()
            self.access_log.request(
                method=method,
                path=path,
                status=x.status,
                duration_ms=round(elapsed * 1000, 3),
                upstream=served_by,
                user=x.principal.identity if x.principal is not None else None,
                request_id=incoming.request_id,
                trace_id=trace_id,
            )

    def _trace(self, method: str, route: str, incoming: _Incoming) -> tuple[trace.Span | None, dict[str, str], str]:
        """The gateway's span (an SDK span when exported, else the W3C rules by hand), the trace
        headers for the upstream, and the trace id for the access log."""
        if self.sdk_spans:
            carrier: dict[str, str] = {}
            if incoming.traceparent:
                carrier["traceparent"] = incoming.traceparent
                if incoming.tracestate:
                    carrier["tracestate"] = incoming.tracestate
            span = _tracer.start_span(
                f"{method} {route}", context=extract(carrier) if carrier else None, kind=SpanKind.SERVER
            )
            trace_headers: dict[str, str] = {}
            inject(trace_headers, trace.set_span_in_context(span))
            return span, trace_headers, format(span.get_span_context().trace_id, "032x")
        trace_id, upstream_traceparent, continued = child_traceparent(incoming.traceparent)
        trace_headers = {"traceparent": upstream_traceparent}
        if continued and incoming.tracestate:
            trace_headers["tracestate"] = incoming.tracestate
        return None, trace_headers, trace_id

    async def _authorize(self, x: _Exchange, authorizations: list[str]) -> None:
        """Who is asking (401 otherwise), then the per-user limits (429). Two Authorization
        headers: this gateway and the service behind it might each act on a different one, so
        neither does."""
        x.principal = await self.verifier.verify_headers(authorizations)
        x.decision = decision = self.admit(x.principal)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {decision.limit} requests per {self.settings.rate_limit_window:g} seconds exceeded",
                {"limit": decision.limit, "retry_after": decision.retry_after},
                {"Retry-After": str(decision.retry_after)},
            )

    async def _answer_locally(
        self, local: Callable[[Principal], bytes], method: str, path: str, x: _Exchange, rid: bytes, send: Any
    ) -> int:
        """A :data:`LOCAL` operation, after :meth:`_authorize`: no service is asked, so it answers
        while every service is down. The body is about the caller's credential: never cached."""
        if method not in _LOCAL_METHODS:
            raise MethodNotAllowed("method not allowed on this resource", None, _LOCAL_ALLOW)
        # Authenticated and admitted by _authorize: no local path is exempt from it.
        assert x.principal is not None
        assert x.decision is not None
        body = local(x.principal)
        headers = [
            _JSON,
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-request-id", rid),
            *x.decision.headers(),
            *self.deprecations.headers(method, path),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        return 200

    def _release(self, x: _Exchange) -> None:
        """Give back what :meth:`_authorize` and the stream cap counted for this request."""
        if x.principal is None:
            return
        if x.stream_open:
            self.close_stream(x.principal.subject)
        if x.decision is not None and x.decision.allowed:
            self.leave(x.principal.subject)

    async def _request_body(
        self, reader: _ClientReader, method: str, incoming: _Incoming
    ) -> bytes | _BodyStream | None:
        """The body to forward, framed for the upstream (a framing header added to
        ``incoming.lines``): small declared bodies read whole (``bytes``), large or chunked ones
        streamed while counted (:class:`_BodyStream`), ``None`` without a body; _ClientGone when
        the client left first. Over the limit is a 413 before anything is read."""
        lines = incoming.lines
        content_length = incoming.content_length
        if content_length is not None:
            try:
                size = int(content_length)
            except ValueError:
                raise InvalidRequest("Content-Length is not a number", {"field": "Content-Length"}) from None
            if size > self.max_body:
                raise _too_large(self.max_body, close=size > 4 * self.max_body)
            if 0 < size <= _BUFFER_BELOW:
                data = await _read_body(reader)
                if data is None:
                    raise _ClientGone
                lines.append(b"content-length: " + content_length + _CRLF)
                return data
            if size > _BUFFER_BELOW:
                lines.append(b"content-length: " + content_length + _CRLF)
                return _BodyStream(reader, self.max_body)
        elif incoming.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
            return _BodyStream(reader, self.max_body, chunked=True)
        if method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: 0\r\n")
        return None

    async def _forward(
        self,
        upstream: Upstream,
        method: str,
        head: bytes,
        data: bytes | _BodyStream | None,
        send: Any,
        extra: list[tuple[bytes, bytes]],
        x: _Exchange,
        path: str = "",
        stream_receive: Any = None,
    ) -> int:
        """Send the request on a pooled connection and relay the answer; the status relayed.
        ``stream_receive``: the client's ``receive`` when this request opens a stream."""
        streaming = isinstance(data, _BodyStream)
        retry = method in _IDEMPOTENT and not streaming
        fresh = False
        while True:
            conn = await self._acquire(upstream, fresh=fresh, streaming=streaming)
            try:
                conn.begin(head_only=method == "HEAD")
                if isinstance(data, _BodyStream):
                    await self._send_streamed(conn, head, data, self.settings.upstream_timeout)
                else:
                    conn.write(head + data if data else head)
                await conn.response_head(self.settings.upstream_timeout)
                return await self._relay(
                    conn, send, extra, self.settings.upstream_timeout, x, upstream.name, path, stream_receive
                )
            except UpstreamUnavailable as exc:
                conn.abort()
                if exc.stale and retry:
                    # A keep-alive connection the upstream had closed while idle: nothing reached
                    # it, so one retry on a fresh connection is safe.
                    retry = False
                    fresh = True
                    continue
                raise _bad_gateway(upstream, exc) from None
            except (UpstreamProtocolError, TimeoutError, _BodyTooLarge, _ClientGone) as exc:
                conn.abort()
                return self._failed(upstream, exc)
            except BaseException:
                conn.abort()
                raise
            finally:
                upstream.release(conn)

    @staticmethod
    async def _acquire(upstream: Upstream, *, fresh: bool, streaming: bool) -> Connection:
        """A connection to ``upstream``, or the 503/504/502 that says why there is none."""
        try:
            return await upstream.acquire(fresh=fresh, streaming=streaming)
        except UpstreamBusy as exc:
            raise ServiceUnavailable(
                f"the {upstream.name} service is busy: {exc}; retry in a second",
                {"service": upstream.name, "retry_after": 1},
                {"Retry-After": "1"},
            ) from None
        except TimeoutError:
            raise GatewayTimeout(
                f"the {upstream.name} service did not accept a connection in time", {"service": upstream.name}
            ) from None
        except UpstreamUnavailable as exc:
            raise _bad_gateway(upstream, exc) from None

    def _failed(self, upstream: Upstream, exc: Exception) -> int:
        """A forward that failed after its connection was aborted: the error to answer with, or
        499 when the client itself went away."""
        if isinstance(exc, _ClientGone):
            return 499
        if isinstance(exc, _BodyTooLarge):
            raise _too_large(self.max_body) from None
        if isinstance(exc, TimeoutError):
            raise GatewayTimeout(
                f"the {upstream.name} service did not answer within {self.settings.upstream_timeout:g} seconds",
                {"service": upstream.name},
            ) from None
        raise _bad_gateway(upstream, exc, "sent an invalid answer") from None

    @staticmethod
    async def _send_streamed(conn: Connection, head: bytes, data: _BodyStream, timeout: float) -> None:
        chunked = data.chunked
        conn.write(head)
        async for chunk in data:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            async with asyncio.timeout(timeout):  # an upstream that stops reading -> 504
                await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")

    async def _relay(
        self,
        conn: Connection,
        send: Any,
        extra: list[tuple[bytes, bytes]],
        timeout: float,
        x: _Exchange,
        service: str = "",
        path: str = "",
        stream_receive: Any = None,
    ) -> int:
        """The upstream's answer to the client: whole when small (or a HEAD), else in chunks;
        over the response limit a 502 (declared length) or a cut connection (discovered late).

        A stream (a request :func:`response_limit.is_stream_request` names, or any
        ``text/event-stream`` answer) lasts until the token that opened it expires: relayed
        until its ``exp``, then ended cleanly (:func:`_relay_chunks`); a token already past its
        ``exp`` (still accepted within the verifier's leeway) opens none: 401, so a client that
        reconnects with it learns at once that it needs a new token, instead of meeting a
        stream that ends as soon as it starts."""
        out, length, content_type = _response_headers(conn, extra)
        status = conn.status
        limit = None if response_limit.is_stream(path, content_type) else self.settings.max_response_bytes
        if limit is not None and length is not None and length > limit and not conn.head_only:
            conn.abort()  # the body is never read: refused from the head alone
            raise response_limit.too_large(service, limit)
        if conn.head_only or (length is not None and length <= _RESPONSE_CHUNK):
            body = b"" if conn.head_only else await conn.read(timeout)
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": body})
            return status
        sse = response_limit.is_event_stream(content_type)
        ends_at = None
        if (stream_receive is not None or sse) and x.principal is not None:
            ends_at = x.principal.expires_at
            if ends_at <= time.time():
                conn.abort()
                raise AuthenticationFailed(
                    "token has expired", {"expires_at": ends_at, "reason": "a stream ends when its token expires"}
                )
        await send({"type": "http.response.start", "status": status, "headers": out})
        if stream_receive is not None:
            # A stream runs until the service ends it or the client leaves: allow long quiet spells.
            timeout = self.settings.stream_idle_timeout
        status, x.expired = await _relay_chunks(
            conn, send, status, limit, timeout, service, stream_receive, ends_at, sse
        )
        return status


def _response_headers(
    conn: Connection, extra: list[tuple[bytes, bytes]]
) -> tuple[list[tuple[bytes, bytes]], int | None, bytes | None]:
    """The upstream's headers to copy back (plus ``extra``), its Content-Length and Content-Type."""
    out: list[tuple[bytes, bytes]] = []
    length: int | None = None
    content_type: bytes | None = None
    for name, value in conn.headers:
        lname = name.lower()
        if lname in _RESPONSE_DROP:
            continue
        if lname == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise UpstreamProtocolError("invalid Content-Length") from None
        elif lname == b"content-type":
            content_type = value
        out.append((lname, value))
    out.extend(extra)
    return out, length, content_type


async def _relay_chunks(
    conn: Connection,
    send: Any,
    status: int,
    limit: int | None,
    timeout: float,
    service: str,
    stream_receive: Any,
    ends_at: float | None = None,
    sse: bool = False,
) -> tuple[int, bool]:
    """The body as it arrives, after the response head went out; the status relayed, and
    whether the body was ended at ``ends_at`` (Unix time: the ``exp`` of the stream's token).
    ``stream_receive``: watch for the client leaving (uvicorn drops writes to a gone client
    silently).

    At ``ends_at`` the upstream connection is aborted (the service's stream ends) and the body
    ended cleanly, as the service ends it: an SSE client reconnects with ``Last-Event-ID``, a
    followed log's with ``Range`` from the bytes it has. An SSE body that stands between two
    events then gets a last comment, ``: token expired``; one cut inside an event does not (the
    client drops the incomplete event, and its id was never confirmed: it comes again)."""
    relayed = 0
    tail = b"\n\n"  # the last bytes relayed: whether an SSE body stands between two events
    watcher = asyncio.create_task(_abort_on_disconnect(stream_receive, conn)) if stream_receive is not None else None
    loop = asyncio.get_running_loop()
    expiry = asyncio.timeout_at(None if ends_at is None else loop.time() + (ends_at - time.time()))
    try:
        async with expiry:
            async for chunk in conn.body(timeout):
                relayed += len(chunk)
                if limit is not None and relayed > limit:
                    # Headers are out (unknown length): cutting the connection is the only way left
                    # to tell the client this answer is incomplete.
                    conn.abort()
                    log.warning("gateway.response_too_large", status=status, limit=limit, service=service)
                    return 502, False
                if sse:
                    tail = (tail + chunk)[-4:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (UpstreamError, TimeoutError) as exc:
        conn.abort()
        if expiry.expired() and (watcher is None or not watcher.done()):
            # The token's time is up (the client is still there): a clean end, not a cut.
            between = tail.endswith((b"\n\n", b"\r\r", b"\r\n\r\n"))
            last = b": token expired\n\n" if sse and between else b""
            await send({"type": "http.response.body", "body": last})
            return status, True
        # Headers are out: the client learns of the failure from the cut connection (uvicorn
        # closes it because the response was never completed).
        if watcher is None or not watcher.done():
            log.warning("gateway.upstream_stream_broken", status=status, error=type(exc).__name__)
        return status, False
    finally:
        if watcher is not None:
            watcher.cancel()
    await send({"type": "http.response.body", "body": b""})
    return status, False


async def _abort_on_disconnect(receive: Any, conn: Connection) -> None:
    """Abort the upstream connection of a stream once its client has gone."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.abort()
            return


def _upstream_head(
    scope: dict[str, Any],
    method: str,
    path: str,
    upstream: Upstream,
    incoming: _Incoming,
    rid: bytes,
    trace_headers: dict[str, str],
) -> bytes:
    """The request head for the upstream: the client's headers as they came, the body's framing
    (already in ``incoming.lines``), then the ones the gateway sets itself."""
    lines = incoming.lines
    client = scope.get("client")
    client_ip = client[0].encode("latin-1") if client else b""
    lines.append(b"x-request-id: " + rid + _CRLF)
    if client_ip:
        forwarded_for = incoming.forwarded_for
        xff = forwarded_for + b", " + client_ip if forwarded_for else client_ip
        lines.append(b"x-forwarded-for: " + xff + _CRLF)
    if incoming.host is not None:
        lines.append(b"x-forwarded-host: " + incoming.host + _CRLF)
    lines.append(b"x-forwarded-proto: " + scope.get("scheme", "http").encode("latin-1") + _CRLF)
    for name, value in trace_headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    raw_path = scope.get("raw_path") or path.encode("utf-8")
    query = scope.get("query_string")
    target = upstream.prefix + raw_path + (b"?" + query if query else b"")
    return b"".join(
        [method.encode("latin-1"), b" ", target, b" HTTP/1.1\r\nhost: ", upstream.host_header, _CRLF, *lines, _CRLF]
    )


def _bad_gateway(upstream: Upstream, exc: Exception, what: str = "is unavailable") -> BadGateway:
    return BadGateway(f"the {upstream.name} service {what}", {"service": upstream.name, "reason": str(exc)})


def _too_large(limit: int, close: bool = False) -> PayloadTooLarge:
    # The connection normally stays open: uvicorn reads and discards the rest of the body (never
    # buffering it), so the client, still sending, gets to read the 413 instead of a reset.
    # Only absurd declared sizes are cut off at once.
    return PayloadTooLarge(
        f"request body exceeds the limit of {limit} bytes", {"limit": limit}, {"Connection": "close"} if close else None
    )


async def _read_body(receive: _ClientReader) -> bytes | None:
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
