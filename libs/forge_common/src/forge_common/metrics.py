"""Prometheus metrics shared by every service, and the ``/metrics`` rendering.

Metrics whose value lives elsewhere (a JetStream consumer's lag, the outbox backlog) are read
when Prometheus scrapes: a component registers an async *refresher* with
:func:`add_refresher`, and :func:`collect` runs every refresher (each bounded by a timeout, a
failing one keeps its last value) before the text is rendered.

Labels stay bounded: every label value comes from a fixed set, or from a
:class:`BoundedLabel` that folds values past its limit into ``other``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST as _PROMETHEUS_CONTENT_TYPE
from prometheus_client import Counter, Gauge, Histogram, generate_latest

__all__ = [
    "CONTENT_TYPE_LATEST",
    "OUTBOX_PENDING",
    "REQUESTS",
    "REQUEST_ERRORS",
    "REQUEST_LATENCY",
    "BoundedLabel",
    "add_refresher",
    "collect",
    "remove_refresher",
    "render",
]

log = structlog.get_logger(__name__)

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
OUTBOX_PENDING = Gauge("forge_outbox_pending", "Outbox rows not yet published to NATS", ["service"])

# How long one scrape waits for a refresher (a slow NATS or Postgres must not hang /metrics).
REFRESH_TIMEOUT = 2.0

Refresher = Callable[[], Awaitable[None]]
_refreshers: list[Refresher] = []


def add_refresher(refresher: Refresher) -> None:
    """Run ``refresher`` before every scrape of this process's ``/metrics``."""
    _refreshers.append(refresher)


def remove_refresher(refresher: Refresher) -> None:
    with contextlib.suppress(ValueError):
        _refreshers.remove(refresher)


async def _refresh(refresher: Refresher) -> None:
    try:
        await asyncio.wait_for(refresher(), REFRESH_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a scrape shows the last value rather than failing
        log.debug("metrics.refresh_failed", refresher=getattr(refresher, "__qualname__", "?"), error=str(exc))


async def collect() -> bytes:
    """Refresh the scrape-time metrics, then render every metric of the process."""
    if _refreshers:
        await asyncio.gather(*(_refresh(r) for r in list(_refreshers)))
    return render()


def render() -> bytes:
    return generate_latest()


class BoundedLabel:
    """A label whose values come from outside (a phase name a repository chose): the first
    ``limit`` distinct values are kept as they are, any further one becomes ``other``, so one
    process never exports more than ``limit + 1`` series per metric for it."""

    OTHER = "other"

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return self.OTHER
