"""The gateway's access log: one JSON line per request, written in batches.

The structlog pipeline and an unbuffered write per request cost about 0.1 ms each time, a tenth
of the gateway's whole latency budget. Lines are encoded with msgspec (same fields as every other
JSON log line of the platform: ``message``, ``level``, ``timestamp``, ``service``, plus the
request's) and flushed together at most ``interval`` seconds later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from typing import IO, Any

import msgspec
import structlog

__all__ = ["AccessLog"]

_encoder = msgspec.json.Encoder()
_UTC = dt.UTC


class AccessLog:
    def __init__(
        self,
        enabled: bool,
        fmt: str = "json",
        service: str = "gateway",
        stream: IO[bytes] | None = None,
        interval: float = 0.05,
        max_lines: int = 512,
    ) -> None:
        self.enabled = enabled
        self.json = fmt == "json"
        self.service = service
        self.stream = stream if stream is not None else sys.stderr.buffer
        self.interval = interval
        self.max_lines = max_lines
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._log = structlog.get_logger("forge_gateway.access")

    def request(self, **fields: Any) -> None:
        if not self.enabled:
            return
        if not self.json:
            self._log.info("http.request", **fields)
            return
        record = {
            "message": "http.request",
            "level": "info",
            "timestamp": dt.datetime.now(_UTC).isoformat().replace("+00:00", "Z"),
            "service": self.service,
            **fields,
        }
        self._lines.append(_encoder.encode(record))
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write(b"\n".join(lines) + b"\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break requests
            pass
