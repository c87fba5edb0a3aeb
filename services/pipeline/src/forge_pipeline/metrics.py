"""The pipeline service's Prometheus metrics (the contract is the table in docs/operations.md).

Run and phase metrics are counted by the process that made the transition, once its
transaction has committed (``forge_common.db.on_commit``): a transition happens under the run's
row lock exactly once across replicas, so the counts summed over replicas are exact.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from forge_common.db import on_commit
from forge_common.metrics import BoundedLabel

from .records import Run

__all__ = [
    "JOBS_PENDING",
    "PHASE_DURATION",
    "RUNS",
    "RUN_DURATION",
    "phase_finished",
    "run_finished",
]

RUN_STATUSES = ("success", "failed", "cancelled")
# Runs last from seconds to hours (CI default timeout 30 min per phase).
_RUN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)

RUNS = Counter("forge_pipeline_runs_total", "Pipeline runs finished, by final status", ["status"])
RUN_DURATION = Histogram(
    "forge_pipeline_run_duration_seconds",
    "Pipeline run duration from creation to its final status",
    ["status"],
    buckets=_RUN_BUCKETS,
)
PHASE_DURATION = Histogram(
    "forge_pipeline_phase_duration_seconds",
    "Duration of a phase that ran (first dispatch to finish), by phase name and outcome",
    ["phase", "status"],
    buckets=_RUN_BUCKETS,
)
JOBS_PENDING = Gauge(
    "forge_jobs_pending", "Jobs waiting in PIPELINE_JOBS per job type (the consumer's num_pending)", ["job_type"]
)
LOG_INDEX_PENDING = Gauge(
    "forge_pipeline_log_index_pending",
    "Finished steps whose log is still to be indexed for search (rows of pipeline.log_index_queue)",
)
LOG_INDEX_OLDEST = Gauge(
    "forge_pipeline_log_index_oldest_seconds", "Age of the oldest log still to be indexed for search (0: none)"
)

# Phase names come from repositories: at most 100 distinct ones per process, then "other".
phase_label = BoundedLabel(100)

# Every bounded series exists from the start (rate() and alerts see 0, not "no data").
for _status in RUN_STATUSES:
    RUNS.labels(_status)


def run_finished(conn: object, run: Run) -> None:
    """Count ``run`` (just finished in ``conn``'s transaction) once that transaction commits."""
    if run.completed_at is None:
        return
    seconds = max(0.0, (run.completed_at - run.started_at).total_seconds())
    status = run.status

    def count() -> None:
        RUNS.labels(status).inc()
        RUN_DURATION.labels(status).observe(seconds)

    on_commit(conn, count)


def phase_finished(conn: object, name: str, status: str, seconds: float) -> None:
    def observe() -> None:
        PHASE_DURATION.labels(phase_label(name), status).observe(max(0.0, seconds))

    on_commit(conn, observe)
