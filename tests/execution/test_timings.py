"""Recorded times are when the work happened on the worker (issue 11).

A step, its task and its phase start and end when the step's process did, not when a report
reached the service: a quick step finishes before its ``running`` report is due and reports
once, yet its phase does not collapse to an instant, and a step sleeping 1.2 s shows 1.2 s on
the step, its task and its phase. (These are assertions on recorded fields, not timing of the
platform.)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from .conftest import Cell

REPO_TOML = """
forge_version = "1"
[phases.quick]
group = 1
[phases.slow]
group = 2
"""

PROJECT_TOML = """
name = "app"
[[phases.quick.steps]]
name = "true"
run = "true"
[[phases.slow.steps]]
name = "sleep"
run = "sleep 1.2"
"""


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _seconds(entity: dict[str, Any]) -> float:
    return (_ts(entity["completed_at"]) - _ts(entity["started_at"])).total_seconds()


async def test_step_task_and_phase_times_are_the_workers(cell: Cell, client: httpx.AsyncClient) -> None:
    repo = cell.repo("timings")
    sha = repo.commit({".forge/repo.toml": REPO_TOML, "app/.forge/project.toml": PROJECT_TOML})
    run = await cell.wait_run(client, await cell.create_run(client, repo, sha), timeout=60)
    assert run["status"] == "success", run
    quick, slow = run["phases"]
    assert (quick["name"], slow["name"]) == ("quick", "slow")

    # The quick phase ran for as long as its step, which is more than no time at all.
    quick_task = quick["tasks"][0]
    quick_step = quick_task["steps"][0]
    assert _ts(quick["completed_at"]) > _ts(quick["started_at"])
    assert _seconds(quick) == _seconds(quick_task) == _seconds(quick_step)

    slow_task = slow["tasks"][0]
    slow_step = slow_task["steps"][0]
    for entity in (slow_step, slow_task, slow):
        assert abs(_seconds(entity) - 1.2) < 0.1, (entity["started_at"], entity["completed_at"])
    # Groups still run in order, and each phase spans its task, which spans its step.
    assert _ts(quick["completed_at"]) <= _ts(slow["started_at"])
    assert slow["started_at"] == slow_task["started_at"] == slow_step["started_at"]
    assert slow["completed_at"] == slow_task["completed_at"] == slow_step["completed_at"]
