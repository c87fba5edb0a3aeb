"""Pipeline API latency and throughput: ``POST /v1/runs`` and ``GET /v1/runs/{id}`` of a
1,000-step run (10 phases x 20 tasks x 5 steps, every step finished with a log, so every step
carries a presigned ``logs_url``), through the gateway and directly against the service.

    .venv/bin/python -m bench.pipeline_api [--posts 1000] [--gets 1000] [--concurrency 1,16] [--list-runs 1000000]

``--list-runs N`` then fills the table with N runs of one repository and measures
``GET /v1/runs`` through the gateway: the first page, a page reached by cursor 90% down the
list, a filtered first page, and (for comparison) the same deep page by offset.

Starts a test platform (FORGE_TEST_* servers when set, else embedded ones) with the dispatcher
off (runs stay pending; nothing but the API is measured) and the gateway's per-user rate limit
raised. The tree is stored with ``service.store_discovery``, the dispatcher's own call. The
client is aiohttp (about 0.2 ms of client CPU per call) on the same 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import psycopg
from psycopg.rows import dict_row

from forge_dev.testing import Platform, session_platform
from forge_pipeline import service
from forge_pipeline.domain import PhasePlan, StepPlan, TaskPlan


def _summary(label: str, latencies: list[float], wall: float) -> dict[str, Any]:
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return {
        "label": label,
        "n": len(lat),
        "rps": len(lat) / wall,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": p99 * 1000,
    }


async def _measure(
    label: str, n: int, concurrency: int, call: Callable[[int], Awaitable[float | None]]
) -> dict[str, Any]:
    """``call`` returns its own latency when part of it must not count, else None."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def lane() -> None:
        for i in counter:
            t0 = time.perf_counter()
            own = await call(i)
            latencies.append(own if own is not None else time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return _summary(f"{label} c={concurrency}", latencies, time.perf_counter() - started)


async def _big_run(session: aiohttp.ClientSession, base: str, platform: Platform) -> str:
    headers = platform.headers("bench@acme.io", "developer")
    body = {
        "repository": f"bench/tree-{uuid.uuid4().hex[:8]}",
        "branch": "main",
        "commit_sha": uuid.uuid4().hex + uuid.uuid4().hex[:8],
        "trigger_type": "push",
    }
    async with session.post(f"{base}/v1/runs", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        run_id: str = (await resp.json())["id"]
    phases = [
        PhasePlan(
            name=f"phase-{p:02d}",
            group_number=p + 1,
            timeout_seconds=1800,
            tasks=[
                TaskPlan(
                    project_name=f"project-{t:02d}",
                    project_path=f"services/project-{t:02d}",
                    steps=[StepPlan(name=f"step-{s}", command=f"make step-{s}") for s in range(5)],
                )
                for t in range(20)
            ],
        )
        for p in range(10)
    ]
    async with await psycopg.AsyncConnection.connect(platform.database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await service.store_discovery(conn, run_id, phases)
            await conn.execute(
                """UPDATE pipeline.steps s SET status = 'success', exit_code = 0,
                       logs_s3_key = 'pipeline-runs/' || s.run_id || '/logs/' || p.name || '/' || t.project_name
                                     || '/' || s.name || '.log'
                   FROM pipeline.tasks t JOIN pipeline.phases p ON p.id = t.phase_id
                   WHERE t.id = s.task_id AND s.run_id = %s""",
                (run_id,),
            )
            await conn.execute("UPDATE pipeline.tasks SET status = 'success' WHERE run_id = %s", (run_id,))
            await conn.execute(
                "UPDATE pipeline.phases SET status = 'success', started_at = now(), completed_at = now() WHERE run_id = %s",
                (run_id,),
            )
    return run_id


async def run(platform: Platform, posts: int, gets: int, concurrencies: list[int]) -> list[dict[str, Any]]:
    targets = {"gateway": platform.gateway_url, "direct": platform.service_url("pipeline")}
    tokens = [platform.headers(f"bench-{i}@acme.io", "developer") for i in range(64)]
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=256)
    db = await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True)
    async with db, aiohttp.ClientSession(connector=connector) as session:
        run_id = await _big_run(session, targets["direct"], platform)
        async with session.get(f"{targets['direct']}/v1/runs/{run_id}", headers=tokens[0]) as resp:
            tree = await resp.json()
            size = len(await resp.read())
        steps = sum(len(t["steps"]) for p in tree["phases"] for t in p["tasks"])
        assert steps == 1000, steps
        assert all("logs_url" in s for p in tree["phases"] for t in p["tasks"] for s in t["steps"])
        print(f"tree: {len(tree['phases'])} phases, {steps} steps with logs_url, {size / 1024:.0f} KiB of JSON")

        for where, base in targets.items():
            # Warm up connections, token caches and plans.
            for i in range(50):
                async with session.get(f"{base}/v1/runs/{run_id}", headers=tokens[i % 64]) as resp:
                    await resp.read()

            for c in concurrencies:

                async def create(i: int, base: str = base) -> None:
                    body = {
                        # Its own repository per request: the 100-active-runs limit is not measured.
                        "repository": f"bench/r-{uuid.uuid4().hex[:12]}",
                        "branch": "main",
                        "commit_sha": uuid.uuid4().hex + uuid.uuid4().hex[:8],
                        "trigger_type": "push",
                    }
                    async with session.post(f"{base}/v1/runs", json=body, headers=tokens[i % 64]) as resp:
                        await resp.read()
                        assert resp.status == 201, resp.status

                async def fetch(i: int, base: str = base) -> None:
                    async with session.get(f"{base}/v1/runs/{run_id}", headers=tokens[i % 64]) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status

                async def fetch_changed(i: int, base: str = base) -> float:
                    # The tree changed since the last read (as while a run executes): the
                    # service rebuilds it. The change itself is not timed.
                    await db.execute(
                        "UPDATE pipeline.runs SET tree_version = tree_version + 1 WHERE id = %s", (run_id,)
                    )
                    t0 = time.perf_counter()
                    await fetch(i, base)
                    return time.perf_counter() - t0

                results.append(await _measure(f"POST /v1/runs ({where})", posts, c, create))
                results.append(await _measure(f"GET 1,000 steps, unchanged ({where})", gets, c, fetch))
                if c == 1:
                    results.append(await _measure(f"GET 1,000 steps, changed ({where})", gets, c, fetch_changed))
    return results


# --- GET /v1/runs of a repository with a million runs: first page, a cursor page deep in the list --


async def _seed_runs(database_url: str, repository: str, count: int) -> None:
    """``count`` finished runs of one repository, a second apart, written in one statement
    (triggers off: the live-status rows of a million runs are not what is measured)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            """
            INSERT INTO pipeline.runs (id, repository, branch, commit_sha, triggered_by, trigger_type, status,
                                       created_at, started_at, completed_at)
            SELECT gen_random_uuid(), %s, CASE WHEN i %% 10 = 0 THEN 'develop' ELSE 'main' END,
                   md5(i::text), 'bench@acme.io', 'push',
                   CASE WHEN i %% 20 = 0 THEN 'failed' ELSE 'success' END::pipeline.run_status,
                   now() - make_interval(secs => i), now() - make_interval(secs => i),
                   now() - make_interval(secs => i - 1)
            FROM generate_series(1, %s) AS i
            """,
            (repository, count),
        )
        # What the (disabled) triggers would have counted.
        await conn.execute(
            """
            INSERT INTO pipeline.run_counts AS c (repository, status, runs)
            SELECT repository, status, count(*) FROM pipeline.runs WHERE repository = %s GROUP BY repository, status
            ON CONFLICT (repository, status) DO UPDATE SET runs = c.runs + excluded.runs
            """,
            (repository,),
        )
        await conn.execute("ANALYZE pipeline.runs")


async def _deep_cursor(database_url: str, repository: str, position: int) -> str:
    """The cursor a client holds after paging down to ``position`` (built as the service does)."""
    from forge_pipeline import domain

    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT id::text AS id, created_at FROM pipeline.runs WHERE repository = %s"
            " ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            (repository, position),
        )
        row = await cur.fetchone()
    assert row is not None
    query = domain.validate_list_query(domain.ListFilters(repository=repository))
    return domain.next_cursor(query, row["created_at"], row["id"])


async def list_runs(platform: Platform, count: int, gets: int) -> list[dict[str, Any]]:
    repository = f"bench-{uuid.uuid4().hex[:6]}/big"
    t0 = time.perf_counter()
    await _seed_runs(platform.database_url, repository, count)
    print(f"seeded {count:,} runs in {time.perf_counter() - t0:.1f} s")
    deep = await _deep_cursor(platform.database_url, repository, count * 9 // 10)
    headers = platform.headers("bench@acme.io", "viewer")
    url = f"{platform.gateway_url}/v1/runs"
    results = []
    async with aiohttp.ClientSession() as session:

        def getter(params: dict[str, str]) -> Callable[[int], Awaitable[None]]:
            async def get(_: int) -> None:
                async with session.get(url, params=params, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()

            return get

        first = {"repository": repository, "limit": "20"}
        await getter(first)(0)
        results.append(await _measure(f"GET /v1/runs first page ({count:,} runs)", gets, 1, getter(first)))
        by_cursor = {**first, "cursor": deep}
        results.append(await _measure("GET /v1/runs by cursor at 90%", gets, 1, getter(by_cursor)))
        filtered = {**first, "status": "failed"}
        results.append(await _measure("GET /v1/runs?status=failed first page", gets, 1, getter(filtered)))
        by_offset = {**first, "offset": str(count * 9 // 10)}
        results.append(await _measure("GET /v1/runs by offset at 90%", max(gets // 10, 5), 1, getter(by_offset)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument(
        "--list-runs", type=int, default=1_000_000, help="runs in the table for the list benchmark (0: skip)"
    )
    parser.add_argument("--list-gets", type=int, default=200)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    env = {"FORGE_DISPATCHER_ENABLED": "false", "FORGE_RATE_LIMIT": "100000000", "FORGE_LOG_LEVEL": "warning"}
    with session_platform(env=env, workers=0) as platform:
        results = asyncio.run(run(platform, args.posts, args.gets, concurrencies)) if args.posts or args.gets else []
        if args.list_runs:
            results += asyncio.run(list_runs(platform, args.list_runs, args.list_gets))
    print(f"| {'operation':<48} | {'n':>5} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} |")
    print(f"|{'-' * 50}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for r in results:
        print(f"| {r['label']:<48} | {r['n']:>5} | {r['rps']:>7.0f} | {r['p50_ms']:>7.2f} | {r['p99_ms']:>7.2f} |")


if __name__ == "__main__":
    main()
