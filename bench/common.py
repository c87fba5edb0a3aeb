"""Helpers shared by the benchmarks: load loops with aiohttp's client and latency summaries."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Summary", "closed_loop", "percentile", "table"]


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Summary:
    def __init__(self, label: str, latencies: list[float], wall: float) -> None:
        self.label = label
        self.latencies = sorted(latencies)
        self.wall = wall

    @property
    def n(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.n / self.wall if self.wall else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000

    def row(self) -> dict[str, Any]:
        return {"label": self.label, "n": self.n, "rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}


async def closed_loop(label: str, n: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> Summary:
    """``n`` calls from ``concurrency`` lanes, each lane starting its next call when one ends."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Summary(label, latencies, time.perf_counter() - started)


def table(rows: list[dict[str, Any]]) -> str:
    width = max([len(r["label"]) for r in rows] + [9])
    lines = [
        f"| {'operation':<{width}} | {'n':>6} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} |",
        f"|{'-' * (width + 2)}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 9}|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']:<{width}} | {r['n']:>6} | {r['rps']:>7.0f} | {r['p50_ms']:>7.3f} | {r['p99_ms']:>7.3f} |"
        )
    return "\n".join(lines)
