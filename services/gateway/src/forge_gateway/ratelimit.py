"""An exact sliding-window rate limiter, one window per user.

Each user's accepted requests of the last ``window`` seconds are kept as timestamps (at most
``limit`` of them), so "1000 requests per minute" means exactly that for any 60-second span, not
per calendar minute. Refused requests are not counted: a client that backs off for
``Retry-After`` seconds is served again.
"""

from __future__ import annotations

import math
import time
from collections import deque

__all__ = ["Decision", "SlidingWindowLimiter"]


class Decision:
    __slots__ = ("allowed", "limit", "remaining", "reset_after")

    def __init__(self, allowed: bool, limit: int, remaining: int, reset_after: float) -> None:
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        # Seconds until the oldest counted request leaves the window (one more slot frees up).
        self.reset_after = reset_after

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_after))

    def headers(self) -> list[tuple[bytes, bytes]]:
        reset_at = math.ceil(time.time() + self.reset_after)
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(reset_at).encode()),
        ]


class SlidingWindowLimiter:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    def hit(self, key: str, now: float | None = None) -> Decision:
        """Count one request of ``key`` if the window has room; say whether it may proceed."""
        if now is None:
            now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= self.limit:
            return Decision(False, self.limit, 0, hits[0] + self.window - now)
        hits.append(now)
        return Decision(True, self.limit, self.limit - len(hits), hits[0] + self.window - now)

    def _sweep(self, now: float) -> None:
        """Forget users idle for a whole window, so memory follows active users only."""
        horizon = now - self.window
        idle = [key for key, hits in self._hits.items() if not hits or hits[-1] <= horizon]
        for key in idle:
            del self._hits[key]
        self._next_sweep = now + self.window
