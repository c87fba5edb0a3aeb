"""OpenTelemetry tracing with W3C ``traceparent`` propagation over HTTP and NATS headers."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

__all__ = ["configure_tracing", "extract", "inject"]

_configured = False


def configure_tracing(service: str, exporter: str = "none") -> None:
    """Install a tracer provider; ``exporter`` is ``none`` or ``console``.

    With ``none`` spans are still created and propagated (trace ids reach logs and
    downstream services); they are just not exported from this process.
    """
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def inject(carrier: MutableMapping[str, str], ctx: context.Context | None = None) -> MutableMapping[str, str]:
    propagate.inject(carrier, context=ctx)
    return carrier


def extract(carrier: Mapping[str, Any]) -> context.Context:
    return propagate.extract(carrier)
