"""Log search: a word printed by one step among 10,000 step logs, found through the gateway.

    .venv/bin/python -m bench.search [--runs 10] [--steps-per-run 1000] [--lines 40] [--gets 300]

Fills a platform (dispatcher off) with ``runs`` runs of ``steps-per-run`` steps each (one phase,
tasks of 5 steps), each step with a log of ``lines`` lines of plausible build output. The first
``reported-runs`` runs upload their logs to S3 and report every step finished through
``PUT /v1/tasks/{id}/report``, the worker's own call, which indexes each log as in production
(search.py; the ingest figure); the other runs' lines are copied into the index table directly
(the same rows), so that 10,000 logs load in minutes on a shared 2-core machine. One step's log prints a word no
other log holds. Then measures ``GET /v1/search/logs?q=<word>`` through the gateway (also with
a repository filter), a first page of a word every log holds, and ``GET /v1/search`` by commit
prefix; and reports how fast the reports indexed lines.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from typing import Any

import aiohttp
import psycopg
from psycopg.rows import dict_row

from bench.common import Summary, closed_loop, table
from forge_common.s3 import S3
from forge_dev.testing import Platform, session_platform
from forge_pipeline import service
from forge_pipeline.domain import PhasePlan, StepPlan, TaskPlan

_WORDS = [
    "compiling",
    "linking",
    "resolving",
    "downloading",
    "fetched",
    "cached",
    "building",
    "testing",
    "passed",
    "skipped",
    "warning",
    "module",
    "package",
    "target",
    "artifact",
    "layer",
    "digest",
    "image",
    "pushing",
    "pulling",
    "checksum",
    "verified",
    "coverage",
    "report",
    "junit",
    "pytest",
    "cargo",
    "npm",
    "gradle",
    "maven",
    "docker",
    "earthly",
    "python",
    "node",
    "rust",
    "golang",
    "wheel",
]
_STEPS_PER_TASK = 5


def _log(rng: random.Random, lines: int, needle: str | None) -> bytes:
    out = []
    for number in range(lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        out.append(f"[{number:04d}] {words} {rng.randint(0, 99999)}")
    if needle is not None:
        out[lines // 2] = f"[{lines // 2:04d}] test_checkout failed: {needle} not found in cache"
    return ("\n".join(out) + "\n").encode()


async def _create_run(session: aiohttp.ClientSession, platform: Platform, steps: int) -> tuple[str, str, str]:
    repository = f"bench/search-{uuid.uuid4().hex[:8]}"
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    body = {"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"}
    headers = platform.headers("bench@acme.io", "developer")
    async with session.post(f"{platform.service_url('pipeline')}/v1/runs", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        run_id: str = (await resp.json())["id"]
    tasks = [
        TaskPlan(
            project_name=f"project-{t:03d}",
            project_path=f"services/project-{t:03d}",
            steps=[StepPlan(name=f"step-{s}", command=f"make step-{s}") for s in range(_STEPS_PER_TASK)],
        )
        for t in range(steps // _STEPS_PER_TASK)
    ]
    async with await psycopg.AsyncConnection.connect(platform.database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await service.store_discovery(
                conn, run_id, [PhasePlan(name="test", group_number=1, timeout_seconds=1800, tasks=tasks)]
            )
    return run_id, repository, sha


async def _copy_lines(platform: Platform, run_id: str, repository: str, logs: list[tuple[str, bytes]]) -> None:
    """The rows the indexer would write for these (step id, log) pairs, copied in directly."""
    async with await psycopg.AsyncConnection.connect(platform.database_url) as conn:
        copy_sql = "COPY pipeline.log_lines (step_id, run_id, repository, line_number, line) FROM STDIN"
        async with conn.cursor().copy(copy_sql) as copy:
            for step_id, data in logs:
                for number, line in enumerate(data.decode().splitlines(), start=1):
                    await copy.write_row((step_id, run_id, repository, number, line))


async def _fill(
    platform: Platform, runs: int, reported: int, steps: int, lines: int, needle: str
) -> tuple[str, str, dict[str, Any]]:
    """Runs, logs in S3 and reports; ``(needle's repository, a commit sha, ingest figures)``.

    The first ``reported`` runs go the production way (S3 upload, then the worker's report,
    which indexes); the others' lines are copied into ``log_lines`` directly, to fill the table
    in minutes on a shared machine (the search reads the same rows either way)."""
    rng = random.Random(7)
    s3 = S3(platform.s3_url, platform.s3_bucket, "forge", "forge-secret", "us-east-1")
    worker = platform.headers("service-account-worker", "worker", service_account=True)
    base = platform.service_url("pipeline")
    needle_run = 0  # the needle's log goes through S3 and the report
    needle_step = rng.randrange(steps)
    needle_repository = ""
    sha = ""
    indexed_bytes = 0
    report_seconds = 0.0
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=1.0)) as session,
        s3.client() as client,
    ):
        semaphore = asyncio.Semaphore(32)

        async def put(key: str, data: bytes) -> None:
            async with semaphore:
                await client.put_object(Bucket=s3.bucket, Key=key, Body=data)

        reporting = asyncio.Semaphore(8)

        async def report(task_id: str, body: list[dict[str, Any]]) -> None:
            """As the worker reports: a 503 (the machine is busy) is retried."""
            async with reporting:
                for _ in range(30):
                    url = f"{base}/v1/tasks/{task_id}/report"
                    async with session.put(url, json={"steps": body}, headers=worker) as resp:
                        if resp.status != 503:
                            assert resp.status == 200, await resp.text()
                            return
                    await asyncio.sleep(1)
                raise AssertionError("the pipeline service stayed unavailable")

        for r in range(runs):
            run_id, repository, sha = await _create_run(session, platform, steps)
            if r == needle_run:
                needle_repository = repository
            async with await psycopg.AsyncConnection.connect(platform.database_url) as conn:
                cur = await conn.execute(
                    """SELECT t.id::text, s.id::text, p.name, t.project_name, s.name FROM pipeline.steps s
                       JOIN pipeline.tasks t ON t.id = s.task_id JOIN pipeline.phases p ON p.id = t.phase_id
                       WHERE s.run_id = %s ORDER BY t.project_name, s.position""",
                    (run_id,),
                )
                rows = await cur.fetchall()
            tasks: dict[str, list[dict[str, Any]]] = {}
            puts = []
            for i, (task_id, step_id, phase, project, name) in enumerate(rows):
                key = f"pipeline-runs/{run_id}/logs/{phase}/{project}/{name}.log"
                data = _log(rng, lines, needle if (r == needle_run and i == needle_step) else None)
                indexed_bytes += len(data)
                puts.append((key, data))
                tasks.setdefault(task_id, []).append(
                    {"id": step_id, "status": "success", "exit_code": 0, "logs_s3_key": key}
                )
            if r >= reported:
                logs = [
                    (step["id"], data)
                    for step, (_, data) in zip([s for b in tasks.values() for s in b], puts, strict=True)
                ]
                await _copy_lines(platform, run_id, repository, logs)
                print(f"run {r + 1}/{runs}: {len(rows)} steps copied", flush=True)
                continue
            await asyncio.gather(*(put(k, d) for k, d in puts))

            started = time.perf_counter()
            await asyncio.gather(*(report(t, b) for t, b in tasks.items()))
            report_seconds += time.perf_counter() - started
            print(f"run {r + 1}/{runs}: {len(rows)} steps indexed", flush=True)
    figures = {
        "steps": reported * steps,
        "lines": reported * steps * lines,
        "bytes": indexed_bytes * reported / runs,
        "seconds": report_seconds,
    }
    return needle_repository, sha, figures


async def _measure(platform: Platform, needle: str, repository: str, sha: str, gets: int) -> list[Summary]:
    headers = platform.headers("bench-reader@acme.io", "viewer")
    base = platform.gateway_url
    results = []
    async with aiohttp.ClientSession() as session:

        async def expect(path: str, params: dict[str, str], count: int | None) -> None:
            async with session.get(f"{base}{path}", params=params, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                if count is not None:
                    assert len(body["results"]) == count, body

        cases: list[tuple[str, str, dict[str, str], int | None]] = [
            ("logs: one step's word", "/v1/search/logs", {"q": needle}, 1),
            ("logs: one step's word, repository", "/v1/search/logs", {"q": needle, "repository": repository}, 1),
            ("logs: word in every log, first 20", "/v1/search/logs", {"q": "checksum", "limit": "20"}, 20),
            (
                "logs: word in every log, repository, first 20",
                "/v1/search/logs",
                {"q": "checksum", "repository": repository, "limit": "20"},
                20,
            ),
            ("runs: commit prefix", "/v1/search", {"q": sha[:12]}, 1),
        ]
        for label, path, params, count in cases:
            await expect(path, params, count)  # warm

            async def call(
                _: int, path: str = path, params: dict[str, str] = params, count: int | None = count
            ) -> None:
                await expect(path, params, count)

            results.append(await closed_loop(label, gets, 1, call))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--reported-runs", type=int, default=1, help="runs indexed through the worker's report")
    parser.add_argument("--steps-per-run", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--gets", type=int, default=300)
    args = parser.parse_args()
    needle = f"quokka{uuid.uuid4().hex[:8]}"
    env = {"FORGE_DISPATCHER_ENABLED": "false", "FORGE_RATE_LIMIT": "100000000", "FORGE_LOG_LEVEL": "warning"}
    with session_platform(env=env, workers=0) as platform:
        repository, sha, ingest = asyncio.run(
            _fill(platform, args.runs, args.reported_runs, args.steps_per_run, args.lines, needle)
        )
        with psycopg.connect(platform.database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE pipeline.log_lines")
        results = asyncio.run(_measure(platform, needle, repository, sha, args.gets))
    print(
        f"{args.runs * args.steps_per_run} step logs, {args.runs * args.steps_per_run * args.lines} lines in the index"
    )
    print(
        f"reports indexed {ingest['steps']} step logs, {ingest['lines']} lines, {ingest['bytes'] / 1e6:.1f} MB in"
        f" {ingest['seconds']:.1f} s of reports ({ingest['lines'] / ingest['seconds']:.0f} lines/s)"
    )
    print(table([r.row() for r in results]))


if __name__ == "__main__":
    main()
