"""Server-Sent Events responses: the wire format, heartbeats and ``Last-Event-ID``.

A stream handler yields ``bytes`` already framed with :func:`event` (or :func:`comment`);
:func:`response` adds a comment heartbeat whenever the source has been quiet for
``heartbeat`` seconds (proxies and the gateway see traffic, clients notice dead peers) and the
headers that keep every hop from buffering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import Stream

from .errors import InvalidRequest

__all__ = ["CONTENT_TYPE", "HEARTBEAT", "comment", "event", "last_event_id", "response", "with_heartbeats"]

CONTENT_TYPE = "text/event-stream"
# The spec's ceiling for the quiet time between two writes of a stream.
HEARTBEAT = 15.0
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    if not value.isdigit() or int(value) > maximum:
        raise InvalidRequest(
            "Last-Event-ID must be the id of an event of this stream (a non-negative integer)",
            {"field": "Last-Event-ID", "value": raw[:100]},
        )
    return int(value)


async def with_heartbeats(source: AsyncIterator[bytes], heartbeat: float) -> AsyncIterator[bytes]:
    """``source``'s chunks, with a comment whenever it has said nothing for ``heartbeat`` s."""
    iterator = source.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=heartbeat)
            if not done:
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
    source: AsyncIterator[bytes], heartbeat: float = HEARTBEAT, headers: dict[str, Any] | None = None
) -> Stream:
    """The litestar response streaming ``source`` as ``text/event-stream``."""
    return Stream(
        with_heartbeats(source, heartbeat),
        media_type=CONTENT_TYPE,
        headers={**_HEADERS, **(headers or {})},
    )
