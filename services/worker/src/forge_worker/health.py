"""Optional HTTP listener of the worker (``FORGE_WORKER_HTTP_PORT``, 0 = off): ``/healthz``,
``/readyz`` (NATS connected) and ``/metrics`` (Prometheus: jobs by type and outcome, job
duration, busy and idle job slots, steps running)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from forge_common import metrics

__all__ = ["JOBS", "JOB_DURATION", "SLOTS", "STEPS_RUNNING", "start_health_server"]

JOBS = Counter("forge_worker_jobs_total", "Jobs finished by this worker", ["job_type", "status"])
JOB_DURATION = Histogram(
    "forge_worker_job_duration_seconds",
    "Time from a job's delivery to its ack",
    ["job_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800),
)
# One slot per pull loop (FORGE_WORKER_CONCURRENCY per job type, see worker.py): busy while it
# handles a job. sum(state="idle") == 0 with jobs pending means the workers are saturated.
SLOTS = Gauge("forge_worker_slots", "Job slots of this worker by state", ["state"])
STEPS_RUNNING = Gauge("forge_worker_steps_running", "Step processes running in this worker")


async def start_health_server(host: str, port: int, ready: Callable[[], bool]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.json_response(
            {"status": "ok" if ok else "unavailable", "checks": {"nats": "ok" if ok else "unavailable"}},
            status=200 if ok else 503,
        )

    async def metrics_endpoint(_: web.Request) -> web.Response:
        return web.Response(body=await metrics.collect(), headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
