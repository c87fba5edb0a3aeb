"""Latency the gateway adds: the same request through the gateway and directly against the
service, one after the other, with the same pooled keep-alive client.

    .venv/bin/python -m bench.gateway_overhead [--requests 4000] [--concurrency 1,16]

The request is ``GET /v1/runs?repository=...`` on the pipeline service (an indexed query that
finds nothing: cheap, but the real path: token check, rate limit, proxy, the service's own token
check and a Postgres round trip). Latency runs alternate gateway and direct blocks of 200 so
both see the same machine load; the added latency is the difference of the medians. A third row
is a request the gateway answers itself (authenticated, unknown /v1 prefix -> 404): its front
half alone. A last pair puts a second gateway in front of a do-nothing upstream
(``bench/common_upstream.py``) so the pipeline's and Postgres's own variance drop out: the
cleanest figure of what the gateway adds. Starts a test platform (FORGE_TEST_* servers when set, else embedded ones) with the
dispatcher off, no workers, and the per-user rate limit raised so one user can drive the load.
The client is aiohttp (about 0.2 ms of client CPU per call) on the same 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import aiohttp

from bench.common import Summary, closed_loop, table
from forge_dev.stack import free_port, wait_http
from forge_dev.testing import Platform, session_platform

BLOCK = 200
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (independent of how busy the machine is)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def run(
    platform: Platform, requests: int, concurrencies: list[int], null_url: str, null_gateway: Any
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    headers = platform.headers("bench-gateway@acme.io", "viewer")
    query = f"/v1/runs?repository=bench/{uuid.uuid4().hex[:12]}&limit=20"
    targets = {
        "direct": platform.service_url("pipeline") + query,
        "gateway": platform.gateway_url + query,
        "gateway 404": platform.gateway_url + "/v1/no-such-prefix",
        "null direct": null_url + query,
        "null gateway": null_gateway.url + query,
    }
    expected = {"direct": 200, "gateway": 200, "gateway 404": 404, "null direct": 200, "null gateway": 200}
    pids = {
        "direct": platform.stack.services["gateway"].popen.pid,
        "gateway": platform.stack.services["gateway"].popen.pid,
        "gateway 404": platform.stack.services["gateway"].popen.pid,
        "null direct": null_gateway.popen.pid,
        "null gateway": null_gateway.popen.pid,
    }
    rows: list[dict[str, Any]] = []
    added: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        def caller(where: str) -> Any:
            url, status = targets[where], expected[where]

            async def call(_: int) -> None:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == status, (where, resp.status)

            return call

        for where in targets:  # warm connections, token caches, query plans
            await closed_loop(where, 300, 4, caller(where))

        for c in concurrencies:
            per_target: dict[str, list[float]] = {w: [] for w in targets}
            cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            walls: dict[str, float] = dict.fromkeys(targets, 0.0)
            blocks = max(1, requests // (BLOCK * c)) if c == 1 else 1
            size = BLOCK if c == 1 else requests
            for b in range(blocks):
                order = list(targets) if b % 2 == 0 else list(reversed(targets))
                for where in order:
                    cpu_before = cpu_seconds(pids[where])
                    s = await closed_loop(where, size, c, caller(where))
                    cpu[where] += cpu_seconds(pids[where]) - cpu_before
                    per_target[where].extend(s.latencies)
                    walls[where] += s.wall
            summaries = {w: Summary(f"{label(w)} c={c}", per_target[w], walls[w]) for w in targets}
            for w, summary in summaries.items():
                rows.append({**summary.row(), "gateway_cpu_ms": cpu[w] / summary.n * 1000})
            added[f"pipeline c={c}"] = summaries["gateway"].p50_ms - summaries["direct"].p50_ms
            added[f"null upstream c={c}"] = summaries["null gateway"].p50_ms - summaries["null direct"].p50_ms
    return rows, added


def label(where: str) -> str:
    return {
        "direct": "GET /v1/runs?repository= direct to pipeline",
        "gateway": "GET /v1/runs?repository= through gateway",
        "gateway 404": "gateway answers itself (404, authenticated)",
        "null direct": "GET do-nothing upstream, direct",
        "null gateway": "GET do-nothing upstream, through gateway",
    }[where]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="per target and concurrency")
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    env = {"FORGE_DISPATCHER_ENABLED": "false", "FORGE_RATE_LIMIT": "100000000"}
    load_before = os.getloadavg()[0]
    port = free_port()
    null = subprocess.Popen([sys.executable, "-m", "bench.common_upstream", str(port)])
    try:
        null_url = f"http://127.0.0.1:{port}"
        wait_http(f"{null_url}/healthz", 30, null, "do-nothing upstream")
        with session_platform(env=env, workers=0) as platform:
            upstreams = {f"FORGE_{n}_URL": null_url for n in ("PIPELINE", "RELEASE", "DEPLOYMENT", "APPROVAL")}
            null_gateway = platform.start_process("gateway", env=upstreams)
            try:
                rows, added = asyncio.run(run(platform, args.requests, concurrencies, null_url, null_gateway))
            finally:
                null_gateway.stop()
    finally:
        null.terminate()
        null.wait(10)
    print(table(rows))
    print()
    for r in rows:
        print(f"gateway CPU per request, {r['label']}: {r['gateway_cpu_ms']:.3f} ms")
    print()
    for what, ms in added.items():
        print(f"gateway added latency at p50, {what}: {ms:.3f} ms")
    print(f"(1-min load average before: {load_before:.1f})")


if __name__ == "__main__":
    main()
