"""Release service throughput and latency on the embedded stack.

    .venv/bin/python -m bench.release [--creates 400] [--gets 400] [--concurrency 1,8,32] [--direct]

Starts a test platform (FORGE_TEST_* servers when set, else embedded ones) and measures, through
the gateway (``--direct``: straight to the release service):

* ``POST /v1/releases`` for ONE hot project (every create contends for the same per-project
  counter row lock, and publishes to the embedded OCI layout before its commit), at several
  client concurrencies;
* ``GET /v1/releases/...`` by each identifier form: UUID, full SHA, 7-character SHA, release
  number, tag, branch alias; and the list endpoint.

Requests rotate over many user tokens so that the gateway's per-user rate limit (1000/min) is
not what gets measured. The client is aiohttp (about 0.2 ms of client CPU per call).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from forge_dev.testing import Platform, session_platform


class Tokens:
    def __init__(self, platform: Platform, role: str, n: int = 64) -> None:
        self._cycle = itertools.cycle(
            [
                {"Authorization": f"Bearer {platform.token(f'bench-{i}-{uuid.uuid4().hex[:6]}@acme.io', role)}"}
                for i in range(n)
            ]
        )

    def next(self) -> dict[str, str]:
        return next(self._cycle)


def _summary(label: str, latencies: list[float], wall: float) -> dict[str, Any]:
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    return {
        "label": label,
        "n": len(lat),
        "rps": len(lat) / wall,
        "p50_ms": statistics.median(lat) * 1000,
        "p95_ms": p95 * 1000,
    }


async def _drive(n: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = itertools.count()

    async def lane() -> None:
        while True:
            i = next(counter)
            if i >= n:
                return
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def run(platform: Platform, base: str, creates: int, gets: int, concurrencies: list[int]) -> list[dict[str, Any]]:
    devs = Tokens(platform, "developer")
    viewers = Tokens(platform, "viewer")
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(base_url=base, connector=connector) as http:

        async def create(repo: str, project: str, **extra: Any) -> dict[str, Any]:
            body = {
                "repository": repo,
                "project": project,
                "commit_sha": secrets.token_hex(20),
                "artifacts": [
                    {
                        "name": "image",
                        "type": "container",
                        "tracking_oci_uri": "registry.example.com/acme/image:tracking",
                        "primary_published_uri": "ghcr.io/acme/image:1.0.0",
                    }
                ],
                **extra,
            }
            async with http.post("/v1/releases", json=body, headers=devs.next()) as resp:
                data: dict[str, Any] = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"create failed: {resp.status} {data}")
                return data

        # Warm-up: connections, token caches, the JIT-less paths of every process.
        warm = f"bench-{uuid.uuid4().hex[:8]}/warm"
        for _ in range(20):
            await create(warm, "p")

        for concurrency in concurrencies:
            repo, project = f"bench-{uuid.uuid4().hex[:8]}/hot", "api"
            lat, wall = await _drive(creates, concurrency, lambda _i, r=repo, p=project: create(r, p))
            listing_total = await _total(http, viewers, repo, project)
            assert listing_total == creates, (listing_total, creates)
            results.append(_summary(f"POST /v1/releases, one project, concurrency {concurrency}", lat, wall))

        # A project with history, then every lookup form against it.
        repo, project = f"bench-{uuid.uuid4().hex[:8]}/read", "api"
        made = [await create(repo, project) for _ in range(200)]
        target = await create(repo, project, trigger={"trigger_type": "tag", "tag": "v1.0.0"})
        await create(repo, project, trigger={"trigger_type": "branch_push", "branch": "main"})
        sha = target["canonical_id"].rsplit("/", 1)[1]
        forms = {
            "uuid": f"/v1/releases/{target['id']}",
            "full sha": f"/v1/releases/{repo}/{project}/{sha}",
            "7-char sha": f"/v1/releases/{repo}/{project}/{sha[:7]}",
            "number": f"/v1/releases/{repo}/{project}/{target['release_number']}",
            "tag": f"/v1/releases/{repo}/{project}/v1.0.0",
            "branch alias": f"/v1/releases/{repo}/{project}/main",
            "encoded repo + number": f"/v1/releases/{repo.replace('/', '%2F')}/{project}/{target['release_number']}",
            "list (limit 20)": f"/v1/releases/{repo}/{project}",
        }
        assert len(made) == 200
        concurrency = max(concurrencies)
        for label, path in forms.items():

            async def get(_i: int, p: str = path) -> None:
                async with http.get(p, headers=viewers.next()) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET {p}: {resp.status}")

            lat, wall = await _drive(gets, concurrency, get)
            results.append(_summary(f"GET by {label}, concurrency {concurrency}", lat, wall))
    return results


async def _total(http: aiohttp.ClientSession, viewers: Tokens, repo: str, project: str) -> int:
    async with http.get(f"/v1/releases/{repo}/{project}", params={"limit": "1"}, headers=viewers.next()) as resp:
        data = await resp.json()
        return int(data["total"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--gets", type=int, default=400)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--direct", action="store_true", help="call the release service, not the gateway")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with session_platform(workers=0) as platform:
        base = platform.service_url("release") if args.direct else platform.gateway_url
        results = asyncio.run(run(platform, base, args.creates, args.gets, concurrencies))
    print(f"release bench via {'release service' if args.direct else 'gateway'}")
    print(f"{'what':<60} {'n':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for r in results:
        print(f"{r['label']:<60} {r['n']:>5} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}")


if __name__ == "__main__":
    main()
