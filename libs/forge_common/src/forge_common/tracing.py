"""OpenTelemetry tracing with W3C ``traceparent`` propagation over HTTP and NATS headers.

Every process calls :func:`configure_tracing` once at start-up. Spans are always created and
propagated (trace ids reach logs, downstream services, jobs, replies and events); whether they
leave the process is decided by the standard OpenTelemetry settings:

* ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none``; when unset, ``otlp`` if an OTLP
  endpoint is configured, else ``FORGE_OTEL_EXPORTER`` (``none``, ``console`` or ``otlp``);
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``_HEADERS``,
  ``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE``: read by the OTLP/HTTP (protobuf) exporter;
* ``OTEL_SERVICE_NAME`` (default ``forge-<process>``), ``OTEL_RESOURCE_ATTRIBUTES``;
* ``OTEL_BSP_*``: the batch span processor's queue and delay.

Over NATS the context travels in message headers: :func:`inject` adds ``traceparent`` (and
``tracestate``) to a header dict, :func:`extract` reads them back from a message's headers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = [
    "EXPORTERS",
    "configure_tracing",
    "exporter_name",
    "extract",
    "flush_tracing",
    "inject",
    "shutdown_tracing",
]

EXPORTERS = ("none", "console", "otlp")

_provider: TracerProvider | None = None
_exporter = "none"


def exporter_name(forge_setting: str = "none", environ: Mapping[str, str] | None = None) -> str:
    """The exporter the settings ask for: ``none``, ``console`` or ``otlp``."""
    env = os.environ if environ is None else environ
    chosen = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen:
        # The standard variable may list several; the first one we know wins.
        for name in (part.strip() for part in chosen.split(",")):
            if name in EXPORTERS:
                return name
        return "none"
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return forge_setting if forge_setting in EXPORTERS else "none"


def _span_exporter(name: str) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, ...: OTEL_EXPORTER_OTLP_*
    return None


def configure_tracing(service: str, exporter: str = "none") -> str:
    """Install the tracer provider of this process; returns the exporter in use.

    ``exporter`` is ``FORGE_OTEL_EXPORTER``; the ``OTEL_*`` variables above take precedence.
    """
    global _provider, _exporter
    if _provider is not None:
        return _exporter
    name = os.environ.get("OTEL_SERVICE_NAME") or f"forge-{service}"
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the explicit name wins over it.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    _exporter = exporter_name(exporter)
    span_exporter = _span_exporter(_exporter)
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return _exporter


def flush_tracing(timeout_ms: int = 5000) -> None:
    """Export the spans still queued (a service stopping; the provider stays usable)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def shutdown_tracing() -> None:
    """Export what is still queued (call once, when the process stops)."""
    if _provider is not None:
        _provider.shutdown()


def inject(carrier: MutableMapping[str, str], ctx: context.Context | None = None) -> MutableMapping[str, str]:
    """Add the current (or ``ctx``'s) ``traceparent``/``tracestate`` to ``carrier``."""
    propagate.inject(carrier, context=ctx)
    return carrier


def extract(carrier: Mapping[str, Any] | None) -> context.Context:
    """The trace context in ``carrier`` (HTTP or NATS headers; ``None`` means none)."""
    return propagate.extract(dict(carrier or {}))
