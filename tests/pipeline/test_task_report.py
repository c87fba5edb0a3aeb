"""Internal PUT /v1/tasks/{id}/report (a worker's whole task in one request): the same rules
and roll-ups as the per-step and per-task status calls, all-or-nothing, consistent when the 20
reports of a phase race each other, the run's events exactly once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg

from forge_dev.testing import Platform, read_events, wait_for_event

from .test_runs_api import ISO, assert_error
from .test_status_api import get, new_run, plan, put_step, put_task, worker


async def report(client: httpx.AsyncClient, platform: Platform, task_id: str, **payload: Any) -> httpx.Response:
    return await client.put(f"/v1/tasks/{task_id}/report", json=payload, headers=worker(platform))


async def test_concurrent_reports_finish_phases_and_the_run_once(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    projects = {f"p{i:02d}": ["build", "check"] for i in range(20)}
    run, phases = await new_run(client, platform, db, plan({"build": (1, projects), "ship": (2, projects)}))
    run_id = run["id"]

    async def finish(task_id: str, step_ids: list[str]) -> None:
        # Steps still pending report their outcome directly (they finished before `running` was due).
        steps = [{"id": sid, "status": "success", "exit_code": 0} for sid in step_ids]
        resp = await report(client, platform, task_id, steps=steps, status="success")
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["task"]["status"] == "success"
        assert ISO.match(data["task"]["started_at"])
        assert ISO.match(data["task"]["completed_at"])
        assert [s["status"] for s in data["steps"]] == ["success", "success"]
        assert all(ISO.match(s["started_at"]) and ISO.match(s["completed_at"]) for s in data["steps"])

    for phase in phases:
        await asyncio.gather(*(finish(t.id, [s.id for s in t.steps]) for t in phase.tasks))
        tree = await get(client, platform, run_id)
        mine = next(p for p in tree["phases"] if p["id"] == phase.id)
        assert mine["status"] == "success"
        assert ISO.match(mine["started_at"])
        assert ISO.match(mine["completed_at"])
    await wait_for_event(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)
    tree = await get(client, platform, run_id)
    assert tree["status"] == "success"
    assert {s["exit_code"] for p in tree["phases"] for t in p["tasks"] for s in t["steps"]} == {0}
    # A retried report (the worker did not see the answer) changes nothing and emits nothing.
    task = phases[0].tasks[0]
    again = await report(
        client, platform, task.id, steps=[{"id": s.id, "status": "success"} for s in task.steps], status="success"
    )
    assert again.status_code == 200, again.text
    assert len(await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)) == 1
    assert await read_events(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id) == []


async def test_failed_report_fails_the_run_and_skips_the_rest(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    run, phases = await new_run(
        client, platform, db, plan({"test": (1, {"api": ["unit", "lint"], "web": ["unit"]}), "b": (2, {"x": ["y"]})})
    )
    run_id = run["id"]
    api, web = phases[0].tasks
    # web is running (its step reported `running` on its own).
    assert (
        await report(client, platform, web.id, steps=[{"id": web.steps[0].id, "status": "running"}])
    ).status_code == 200
    resp = await report(
        client,
        platform,
        api.id,
        steps=[{"id": api.steps[0].id, "status": "failed", "exit_code": 3, "logs_s3_key": "k/unit.log"}],
        status="failed",
        error="unit failed (exit 3)",
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["steps"][0]["exit_code"] == 3
    assert resp.json()["steps"][0]["logs_s3_key"] == "k/unit.log"
    failed = await wait_for_event(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id)
    assert failed["data"]["failed_phase"] == "test"
    assert failed["data"]["error_message"] == "task api of phase test failed: unit failed (exit 3)"
    tree = await get(client, platform, run_id)
    assert tree["status"] == "failed"
    test_phase, b_phase = tree["phases"]
    assert [s["status"] for s in test_phase["tasks"][0]["steps"]] == ["failed", "skipped"]
    assert test_phase["status"] == "running"  # web may still finish
    assert b_phase["status"] == "skipped"
    # The running task still reports; its phase then finishes failed; nothing is emitted twice.
    resp = await report(
        client, platform, web.id, steps=[{"id": web.steps[0].id, "status": "success"}], status="success"
    )
    assert resp.status_code == 200, resp.text
    assert (await get(client, platform, run_id))["phases"][0]["status"] == "failed"
    # A step of the failed run that never started was skipped and cannot finish now.
    err = assert_error(
        await report(
            client, platform, phases[1].tasks[0].id, steps=[{"id": phases[1].tasks[0].steps[0].id, "status": "success"}]
        ),
        409,
        "resource_conflict",
    )
    assert err["details"]["current_status"] == "skipped"
    assert len(await read_events(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id)) == 1
    assert len(await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)) == 1


async def test_bad_reports_change_nothing(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    run, phases = await new_run(client, platform, db, plan({"test": (1, {"api": ["unit", "lint"], "web": ["unit"]})}))
    api, web = phases[0].tasks
    unit, lint = api.steps
    # The second step's transition is illegal: the first step's change is rolled back too.
    assert (await put_step(client, platform, lint.id, status="running")).status_code == 200
    assert (await put_step(client, platform, lint.id, status="success")).status_code == 200
    resp = await report(
        client, platform, api.id, steps=[{"id": unit.id, "status": "success"}, {"id": lint.id, "status": "running"}]
    )
    err = assert_error(resp, 409, "resource_conflict")
    assert err["details"] == {"id": lint.id, "current_status": "success", "requested_status": "running"}
    tree = await get(client, platform, run["id"])
    assert [s["status"] for s in tree["phases"][0]["tasks"][0]["steps"]] == ["pending", "success"]
    # A task cannot finish without having started.
    assert_error(await report(client, platform, web.id, status="success"), 409, "resource_conflict")
    # A step of another task, an unknown step, an unknown task.
    resp = await report(client, platform, api.id, steps=[{"id": web.steps[0].id, "status": "running"}])
    assert assert_error(resp, 400, "invalid_request")["details"]["id"] == web.steps[0].id
    missing = str(uuid.uuid4())
    assert_error(
        await report(client, platform, api.id, steps=[{"id": missing, "status": "running"}]), 400, "invalid_request"
    )
    assert_error(
        await report(client, platform, missing, steps=[{"id": unit.id, "status": "running"}]), 400, "invalid_request"
    )
    assert_error(await report(client, platform, missing, status="running"), 404, "resource_not_found")
    assert_error(await report(client, platform, api.id), 400, "invalid_request")
    tree = await get(client, platform, run["id"])
    assert [t["status"] for t in tree["phases"][0]["tasks"]] == ["running", "pending"]  # lint's own call started api
    # A task reported running starts; a retried `running` is a no-op.
    for _ in range(2):
        resp = await report(client, platform, web.id, status="running")
        assert resp.status_code == 200, resp.text
        assert resp.json()["task"]["status"] == "running"
    tree = await get(client, platform, run["id"])
    assert (tree["status"], tree["phases"][0]["status"]) == ("running", "running")
    assert [t["status"] for t in tree["phases"][0]["tasks"]] == ["running", "running"]
    assert (await put_task(client, platform, web.id, status="running")).status_code == 200
