"""Deployment latency and throughput on the embedded stack, through the gateway.

    .venv/bin/python -m bench.deployment [--releases 20] [--concurrency 10]

Starts a test platform (FORGE_TEST_* servers when set, else embedded ones), creates releases,
then measures: one deployment at a time (POST latency = release lookup + GitOps commit + DB),
time from POST to active (deployment.completed), and N concurrent deployments.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from typing import Any

import httpx

from forge_dev.testing import Platform, session_platform, wait_for_event


async def _release(client: httpx.AsyncClient, platform: Platform, repository: str, project: str) -> str:
    resp = await client.post(
        "/v1/releases",
        json={"repository": repository, "project": project, "commit_sha": secrets.token_hex(20), "artifacts": []},
        headers=platform.headers("bench@acme.io", "developer"),
    )
    resp.raise_for_status()
    release_id: str = resp.json()["id"]
    return release_id


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, n={len(values)}"


async def run(platform: Platform, releases: int, concurrency: int) -> dict[str, Any]:
    headers = platform.headers("bench@acme.io", "developer")
    repository = f"bench{uuid.uuid4().hex[:8]}/app"
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=120.0) as client:
        started = time.perf_counter()
        ids = [await _release(client, platform, repository, f"p{i}") for i in range(releases)]
        release_seconds = (time.perf_counter() - started) / releases

        post_latency: list[float] = []
        to_active: list[float] = []
        for release_id in ids[: max(1, releases // 2)]:
            t0 = time.perf_counter()
            resp = await client.post(
                "/v1/deployments", json={"release_id": release_id, "environment": "dev"}, headers=headers
            )
            resp.raise_for_status()
            post_latency.append(time.perf_counter() - t0)
            deployment_id = resp.json()["id"]
            await wait_for_event(
                platform, "deployment.completed", lambda e, d=deployment_id: e["data"]["deployment_id"] == d
            )
            to_active.append(time.perf_counter() - t0)

        sem = asyncio.Semaphore(concurrency)

        async def one(release_id: str) -> float:
            async with sem:
                t0 = time.perf_counter()
                resp = await client.post(
                    "/v1/deployments", json={"release_id": release_id, "environment": "staging"}, headers=headers
                )
                resp.raise_for_status()
                return time.perf_counter() - t0

        t0 = time.perf_counter()
        concurrent = await asyncio.gather(*(one(r) for r in ids))
        wall = time.perf_counter() - t0
    return {
        "release create (per release)": f"{release_seconds * 1000:.1f} ms",
        "POST /v1/deployments, one at a time": _ms(post_latency),
        "POST to active (deployment.completed seen)": _ms(to_active),
        f"{len(ids)} deployments, {concurrency} in flight": f"{wall:.2f} s wall, {len(ids) / wall:.1f} deployments/s; {_ms(concurrent)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--releases", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    with session_platform(workers=0) as platform:
        results = asyncio.run(run(platform, args.releases, args.concurrency))
    for name, value in results.items():
        print(f"{name:48s} {value}")


if __name__ == "__main__":
    main()
