"""Server-Sent Events responses: the wire format, heartbeats and ``Last-Event-ID``.

A stream handler yields ``bytes`` already framed with :func:`event` (or :func:`comment`);
:func:`response` adds a comment heartbeat whenever the source has been quiet for
``heartbeat`` seconds (proxies and the gateway see traffic, clients notice dead peers) and the
headers that keep every hop from buffering.

A client may bound a stream with ``?timeout=SECONDS`` (:func:`stream_timeout`), as Kubernetes
watches take ``timeoutSeconds``: the server ends the stream cleanly after that long, and the
client reconnects with ``Last-Event-ID`` when it wants more. Scripts that poll ("what happened
in the last minute"), clients behind proxies that cut long responses, and test tools that must
see an answer end use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import Stream

from .errors import InvalidRequest

__all__ = [
    "CONTENT_TYPE",
    "HEARTBEAT",
    "MAX_TIMEOUT",
    "TIMEOUT_SCHEMA",
    "comment",
    "event",
    "last_event_id",
    "response",
    "stream_timeout",
    "with_heartbeats",
]

CONTENT_TYPE = "text/event-stream"
# The spec's ceiling for the quiet time between two writes of a stream.
HEARTBEAT = 15.0
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# ``?timeout=``: whole seconds, at most a day.
MAX_TIMEOUT = 86400
TIMEOUT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT}


def event(data: bytes | str, name: str | None = None, event_id: str | int | None = None) -> bytes:
    """One SSE event; ``data`` may hold newlines (each line becomes a ``data:`` field)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if name is not None:
        lines.append(f"event: {name}")
    lines.extend(f"data: {line}" for line in text.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def comment(text: str = "") -> bytes:
    return f": {text}\n\n".encode()


def last_event_id(raw: str | None, maximum: int = 2**63 - 1) -> int | None:
    """The ``Last-Event-ID`` header of a stream whose ids are non-negative integers."""
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()) or int(value) > maximum:
        raise InvalidRequest(
            "Last-Event-ID must be the id of an event of this stream (a non-negative integer)",
            {"field": "Last-Event-ID", "value": raw[:100]},
        )
    return int(value)


def stream_timeout(raw: str | None) -> float | None:
    """The ``timeout`` query parameter of a stream: whole seconds, 1 to :data:`MAX_TIMEOUT`."""
    if raw is None:
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()) or not (1 <= int(value) <= MAX_TIMEOUT):
        raise InvalidRequest(
            f"timeout must be a whole number of seconds from 1 to {MAX_TIMEOUT}",
            {"field": "timeout", "value": raw[:100]},
        )
    return float(value)


async def with_heartbeats(
    source: AsyncIterator[bytes], heartbeat: float, timeout: float | None = None
) -> AsyncIterator[bytes]:
    """``source``'s chunks, with a comment whenever it has said nothing for ``heartbeat`` s;
    ending (after a ``: timeout`` comment) once ``timeout`` s have passed, if given."""
    iterator = source.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            wait = heartbeat
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    yield comment("timeout")
                    return
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:
                if deadline is None or deadline - time.monotonic() > 0:
                    yield comment("heartbeat")
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            finally:
                if done:
                    pending = None
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(BaseException):
                await closer()


def response(
    source: AsyncIterator[bytes],
    heartbeat: float = HEARTBEAT,
    headers: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> Stream:
    """The litestar response streaming ``source`` as ``text/event-stream`` (for at most
    ``timeout`` seconds)."""
    return Stream(
        with_heartbeats(source, heartbeat, timeout),
        media_type=CONTENT_TYPE,
        headers={**_HEADERS, **(headers or {})},
    )
