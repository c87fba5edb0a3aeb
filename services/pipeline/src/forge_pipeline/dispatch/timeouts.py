"""Deadlines of the tasks of a phase group.

A task's deadline counts from its first dispatch (``tasks.dispatched_at``, kept across
takeovers), so a replica that takes a run over does not give its tasks a fresh timeout.
"""

from __future__ import annotations

import datetime as dt
import time

from forge_pipeline.domain import PhasePlan

from .driver import format_seconds

__all__ = ["TaskDeadlines"]


class TaskDeadlines:
    def __init__(self) -> None:
        self._deadline: dict[str, float] = {}
        self._timeout: dict[str, float] = {}

    def add(
        self, task_id: str, timeout: float, first_dispatch: dt.datetime, db_now: dt.datetime, grace: float = 0.0
    ) -> None:
        """``grace``: waited beyond ``timeout`` (the executor enforces the timeout itself)."""
        elapsed = max(0.0, (db_now - first_dispatch).total_seconds())
        self._timeout[task_id] = timeout
        self._deadline[task_id] = time.monotonic() + timeout + grace - elapsed

    def timeout(self, task_id: str) -> float:
        return self._timeout[task_id]

    def wait_time(self, pending: list[str], check_every: float) -> float:
        """How long to wait for replies before looking at the clock or the database again."""
        next_deadline = min(self._deadline[t] for t in pending)
        return max(0.0, min(next_deadline - time.monotonic(), check_every))

    def overdue(self, pending: list[str]) -> list[str]:
        now = time.monotonic()
        return [t for t in pending if self._deadline[t] <= now]

    def error(self, task_id: str, phase: PhasePlan) -> str:
        which = f"phase {phase.name} timeout" if phase.timeout_seconds else "CI job timeout"
        return f"timed out after {format_seconds(self._timeout[task_id])} ({which})"
