"""The response size limit: no non-streaming answer over ``FORGE_MAX_RESPONSE_BYTES`` is relayed.

List endpoints are paged (at most 100 items a page), so they cannot reach it; a response that
does is a bug or a hostile upstream, and the client gets a 502 instead of 50 MB of it. Streams
are the documented exception: ``text/event-stream`` answers and step logs
(``GET /v1/steps/{id}/logs``) are relayed however long they run.
"""

from __future__ import annotations

import re

from forge_common.errors import BadGateway

__all__ = ["is_event_stream", "is_stream", "is_stream_request", "too_large"]

_STEP_LOGS = re.compile(r"^/v[0-9]+/steps/[^/]+/logs$")
_EVENT_STREAMS = re.compile(r"^/v[0-9]+/(?:events|runs/[^/]+/events)$")
_FOLLOW = re.compile(rb"(?:^|&)follow=(?:true|1)(?:&|$)", re.IGNORECASE)


def is_stream_request(method: str, path: str, query: bytes) -> bool:
    """Whether this request opens a long-lived stream (SSE, or a followed step log): it is
    exempt from the upstream idle timeout and counts against the per-user stream cap."""
    if method != "GET":
        return False
    if _EVENT_STREAMS.match(path):
        return True
    return _STEP_LOGS.match(path) is not None and _FOLLOW.search(query) is not None


def is_event_stream(content_type: bytes | None) -> bool:
    """Whether an answer of this ``Content-Type`` is Server-Sent Events."""
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


def is_stream(path: str, content_type: bytes | None) -> bool:
    """Whether this answer is exempt from the limit."""
    return is_event_stream(content_type) or _STEP_LOGS.match(path) is not None


def too_large(service: str, limit: int) -> BadGateway:
    return BadGateway(
        f"the {service} service answered with more than the response limit of {limit} bytes",
        {"service": service, "limit": limit},
    )
