"""A local OTLP/HTTP trace receiver: a real HTTP server taking ``POST /v1/traces`` in both OTLP
encodings (binary protobuf, ``application/x-protobuf``, and JSON, ``application/json``), as an
OpenTelemetry Collector does, and keeping the spans it received for the test to read."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # resource attribute service.name
    scope: str  # instrumentation scope (tracer) name
    name: str
    trace_id: str  # 32 hex digits
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def decode(body: bytes, content_type: str) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    if content_type.startswith("application/json"):
        json_format.Parse(body, request)
    else:
        request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        scope=scope_spans.scope.name,
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                    )
                )
    return spans


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                content_type = self.headers.get("Content-Type", "application/x-protobuf")
                try:
                    spans = decode(body, content_type)
                except Exception:  # noqa: BLE001 - a malformed export is the exporter's bug: 400
                    self.send_error(400)
                    return
                receiver._add(spans)
                answer = ExportTraceServiceResponse()
                payload = (
                    json_format.MessageToJson(answer).encode()
                    if content_type.startswith("application/json")
                    else answer.SerializeToString()
                )
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self.requests += 1
            self.spans.extend(spans)
            self._changed.notify_all()

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._changed:
            return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Until ``predicate(spans received so far)`` holds; woken by each export, no polling."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: predicate(list(self.spans)), timeout)

        if not await asyncio.to_thread(wait):
            raise AssertionError(f"the receiver did not get the expected spans in {timeout}s")
        with self._changed:
            return list(self.spans)
