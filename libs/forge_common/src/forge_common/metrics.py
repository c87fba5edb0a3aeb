"""Prometheus metrics shared by every service."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as _PROMETHEUS_CONTENT_TYPE
from prometheus_client import Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "REQUESTS", "REQUEST_ERRORS", "REQUEST_LATENCY", "render"]

# Litestar appends "; charset=utf-8" to text/* media types itself; prometheus_client's constant
# already carries it, and a duplicated parameter makes the header unparsable (Go's
# mime.ParseMediaType, i.e. Prometheus 3, refuses "duplicate parameter name").
CONTENT_TYPE_LATEST = _PROMETHEUS_CONTENT_TYPE.replace("; charset=utf-8", "")

REQUESTS = Counter("forge_http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
REQUEST_ERRORS = Counter(
    "forge_http_request_errors_total", "HTTP responses with status >= 400", ["service", "method", "route", "status"]
)
REQUEST_LATENCY = Histogram(
    "forge_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def render() -> bytes:
    return generate_latest()
