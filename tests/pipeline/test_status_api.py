"""Internal PUT /v1/tasks/{id}/status and /v1/steps/{id}/status: legal transitions, roll-ups,
the completed/failed events exactly once, and consistency under concurrent reports.

Run trees are stored with ``service.store_discovery``, the same call the dispatcher makes
after a discovery job, on the API-only instance's database."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from forge_common.s3 import S3
from forge_dev.testing import Platform, read_events, wait_for_event
from forge_pipeline import service
from forge_pipeline.domain import PhasePlan, StepPlan, TaskPlan

from .conftest import unique_repo, unique_sha
from .test_runs_api import ISO, assert_error, body, dev


def worker(platform: Platform) -> dict[str, str]:
    return platform.headers("forge-worker", service_account=True)


def plan(phases: dict[str, tuple[int, dict[str, list[str]]]]) -> list[PhasePlan]:
    return [
        PhasePlan(
            name=name,
            group_number=group,
            timeout_seconds=600,
            tasks=[
                TaskPlan(
                    project_name=project,
                    project_path=f"services/{project}",
                    steps=[StepPlan(name=s, action="shell", command=f"echo {s}") for s in steps],
                )
                for project, steps in tasks.items()
            ],
        )
        for name, (group, tasks) in phases.items()
    ]


async def new_run(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any], phases: list[PhasePlan]
) -> tuple[dict[str, Any], list[PhasePlan]]:
    req = body()
    created = (await client.post("/v1/runs", json=req, headers=dev(platform))).json()
    async with db.transaction():
        stored = await service.store_discovery(db, created["id"], phases, release_triggers=[{"branch": "main"}])
    return {**req, **created}, stored


async def get(client: httpx.AsyncClient, platform: Platform, run_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/runs/{run_id}", headers=platform.headers("v@example.com", "viewer"))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def put_step(client: httpx.AsyncClient, platform: Platform, step_id: str, **payload: Any) -> httpx.Response:
    return await client.put(f"/v1/steps/{step_id}/status", json=payload, headers=worker(platform))


async def put_task(client: httpx.AsyncClient, platform: Platform, task_id: str, **payload: Any) -> httpx.Response:
    return await client.put(f"/v1/tasks/{task_id}/status", json=payload, headers=worker(platform))


async def test_successful_run_rolls_up_and_completes_once(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    run, phases = await new_run(
        client,
        platform,
        db,
        plan({"test": (1, {"api": ["unit", "lint"], "web": ["unit"]}), "build": (2, {"api": ["package"]})}),
    )
    run_id = run["id"]
    test_phase, build_phase = phases
    api_task, web_task = test_phase.tasks
    unit = api_task.steps[0]

    tree = await get(client, platform, run_id)
    assert [p["name"] for p in tree["phases"]] == ["test", "build"]
    p0 = tree["phases"][0]
    assert set(p0) == {"id", "name", "group_number", "status", "started_at", "completed_at", "tasks"}
    assert (p0["id"], p0["group_number"], p0["status"], p0["started_at"]) == (test_phase.id, 1, "pending", None)
    t0 = p0["tasks"][0]
    # Beyond the spec: tasks and steps carry their times too (null until they start).
    assert set(t0) == {"id", "project_name", "status", "started_at", "completed_at", "steps"}
    assert (t0["id"], t0["project_name"], t0["status"]) == (api_task.id, "api", "pending")
    assert t0["steps"] == [
        {
            "id": unit.id,
            "name": "unit",
            "status": "pending",
            "exit_code": None,
            "started_at": None,
            "completed_at": None,
        },
        {
            "id": api_task.steps[1].id,
            "name": "lint",
            "status": "pending",
            "exit_code": None,
            "started_at": None,
            "completed_at": None,
        },
    ]

    # A step starting starts its task, phase and run.
    resp = await put_step(client, platform, unit.id, status="running")
    assert resp.status_code == 200, resp.text
    view = resp.json()
    assert set(view) == {"id", "task_id", "run_id", "status", "exit_code", "logs_s3_key", "started_at", "completed_at"}
    assert (view["status"], view["task_id"], view["run_id"]) == ("running", api_task.id, run_id)
    assert ISO.match(view["started_at"])
    assert view["completed_at"] is None
    tree = await get(client, platform, run_id)
    assert tree["status"] == "running"
    assert tree["phases"][0]["status"] == "running"
    assert ISO.match(tree["phases"][0]["started_at"])
    assert tree["phases"][0]["tasks"][0]["status"] == "running"
    assert tree["phases"][1]["status"] == "pending"

    # Logs: the key is stored and GET returns a presigned URL that serves the object.
    log_key = f"pipeline-runs/{run_id}/logs/test/api/unit.log"
    s3 = S3(platform.s3_url, platform.s3_bucket, "forge", "forge-secret", "us-east-1")
    await s3.ensure_bucket()
    async with s3.client() as c:
        await c.put_object(Bucket=s3.bucket, Key=log_key, Body=b"unit tests passed\n")
    resp = await put_step(client, platform, unit.id, status="success", exit_code=0, logs_s3_key=log_key)
    assert resp.status_code == 200
    assert resp.json()["exit_code"] == 0
    assert resp.json()["logs_s3_key"] == log_key
    assert ISO.match(resp.json()["completed_at"])
    step = (await get(client, platform, run_id))["phases"][0]["tasks"][0]["steps"][0]
    assert set(step) == {"id", "name", "status", "exit_code", "started_at", "completed_at", "logs_url"}
    assert step["status"] == "success"
    assert step["exit_code"] == 0
    async with httpx.AsyncClient() as raw:
        fetched = await raw.get(step["logs_url"])
    assert fetched.status_code == 200
    assert fetched.content == b"unit tests passed\n"

    for s in api_task.steps[1:]:
        assert (await put_step(client, platform, s.id, status="running")).status_code == 200
        assert (await put_step(client, platform, s.id, status="success", exit_code=0)).status_code == 200
    task_resp = await put_task(client, platform, api_task.id, status="success")
    assert task_resp.status_code == 200
    assert set(task_resp.json()) == {"id", "run_id", "status", "error", "started_at", "completed_at"}
    tree = await get(client, platform, run_id)
    assert tree["phases"][0]["status"] == "running"  # web has not finished yet

    for task in (web_task, build_phase.tasks[0]):
        assert (await put_task(client, platform, task.id, status="running")).status_code == 200
        for s in task.steps:
            await put_step(client, platform, s.id, status="running")
            await put_step(client, platform, s.id, status="success", exit_code=0)
        assert (await put_task(client, platform, task.id, status="success")).status_code == 200

    tree = await get(client, platform, run_id)
    assert tree["status"] == "success"
    assert ISO.match(tree["completed_at"])
    assert [p["status"] for p in tree["phases"]] == ["success", "success"]
    assert all(ISO.match(p["completed_at"]) for p in tree["phases"])

    event = await wait_for_event(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)
    assert event["data"] == {
        "run_id": run_id,
        "repository": run["repository"],
        "commit_sha": run["commit_sha"],
        "status": "success",
        "duration_seconds": event["data"]["duration_seconds"],
    }
    assert isinstance(event["data"]["duration_seconds"], int)
    assert event["data"]["duration_seconds"] >= 0
    # A repeated report and the orchestrator's own completion change nothing and emit nothing.
    assert (await put_task(client, platform, api_task.id, status="success")).status_code == 200
    async with db.transaction():
        assert await service.complete_run(db, run_id) is False
        assert await service.fail_run(db, run_id, "late") is False
    assert len(await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)) == 1
    assert await read_events(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id) == []


async def test_failed_task_fails_the_run_once_and_skips_what_never_ran(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    run, phases = await new_run(
        client,
        platform,
        db,
        plan({"test": (1, {"api": ["unit", "lint"], "web": ["unit"]}), "build": (2, {"api": ["package"]})}),
    )
    run_id = run["id"]
    api_task, web_task = phases[0].tasks
    await put_task(client, platform, web_task.id, status="running")
    await put_step(client, platform, web_task.steps[0].id, status="running")
    await put_task(client, platform, api_task.id, status="running")
    await put_step(client, platform, api_task.steps[0].id, status="running")
    await put_step(client, platform, api_task.steps[0].id, status="failed", exit_code=3)
    resp = await put_task(client, platform, api_task.id, status="failed", error="unit tests failed (exit 3)")
    assert resp.status_code == 200
    assert resp.json()["error"] == "unit tests failed (exit 3)"

    failed = await wait_for_event(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id)
    assert failed["data"] == {
        "run_id": run_id,
        "repository": run["repository"],
        "commit_sha": run["commit_sha"],
        "failed_phase": "test",
        "error_message": "task api of phase test failed: unit tests failed (exit 3)",
    }
    completed = await wait_for_event(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)
    assert completed["data"]["status"] == "failed"

    tree = await get(client, platform, run_id)
    assert tree["status"] == "failed"
    assert ISO.match(tree["completed_at"])
    test_phase, build_phase = tree["phases"]
    assert test_phase["status"] == "running"  # web is still running and may finish
    api, web = test_phase["tasks"]
    assert api["status"] == "failed"
    assert [s["status"] for s in api["steps"]] == ["failed", "skipped"]
    assert api["steps"][0]["exit_code"] == 3
    assert web["status"] == "running"
    assert build_phase["status"] == "skipped"
    assert build_phase["tasks"][0]["status"] == "skipped"
    assert build_phase["tasks"][0]["steps"][0]["status"] == "skipped"

    # Running work of a failed run still reports; nothing new starts.
    assert (await put_step(client, platform, web_task.steps[0].id, status="success", exit_code=0)).status_code == 200
    assert (await put_task(client, platform, web_task.id, status="success")).status_code == 200
    skipped_step = phases[1].tasks[0].steps[0].id
    assert_error(await put_step(client, platform, skipped_step, status="running"), 409, "resource_conflict")
    tree = await get(client, platform, run_id)
    assert tree["phases"][0]["status"] == "failed"
    assert tree["status"] == "failed"
    assert len(await read_events(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id)) == 1
    assert len(await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)) == 1


async def test_illegal_transitions_and_bad_reports(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    _, phases = await new_run(client, platform, db, plan({"test": (1, {"api": ["unit", "lint"]})}))
    task = phases[0].tasks[0]
    step, other = task.steps
    err = assert_error(await put_step(client, platform, step.id, status="success"), 409, "resource_conflict")
    assert err["details"] == {"id": step.id, "current_status": "pending", "requested_status": "success"}
    assert_error(await put_task(client, platform, task.id, status="failed"), 409, "resource_conflict")
    assert (await put_step(client, platform, step.id, status="running")).status_code == 200
    assert (await put_step(client, platform, step.id, status="running")).status_code == 200  # retried report
    assert (await put_step(client, platform, step.id, status="success", exit_code=0)).status_code == 200
    for back in ("running", "failed"):
        assert_error(await put_step(client, platform, step.id, status=back), 409, "resource_conflict")

    for payload, field in [
        ({"status": "skipped"}, "status"),
        ({"status": "pending"}, "status"),
        ({}, "status"),
        ({"status": "running", "exit_code": "zero"}, "exit_code"),
        ({"status": "running", "exit_code": 2**40}, "exit_code"),
        ({"status": "running", "logs_s3_key": ""}, "logs_s3_key"),
        ({"status": "running", "extra": True}, "extra"),
    ]:
        resp = await put_step(client, platform, other.id, **payload)
        assert assert_error(resp, 400, "invalid_request")["details"].get("field") == field, payload
    resp = await put_task(client, platform, task.id, status="running", error=7)
    assert assert_error(resp, 400, "invalid_request")["details"]["field"] == "error"

    missing = str(uuid.uuid4())
    assert_error(await put_step(client, platform, missing, status="running"), 404, "resource_not_found")
    assert_error(await put_task(client, platform, missing, status="running"), 404, "resource_not_found")
    assert_error(await put_task(client, platform, "nope", status="running"), 400, "invalid_request")
    # Only worker service accounts report status; users (even admins) may not.
    for headers in (dev(platform), platform.headers("root@example.com", "admin")):
        resp = await client.put(f"/v1/steps/{other.id}/status", json={"status": "running"}, headers=headers)
        assert_error(resp, 403, "authorization_failed")
    assert_error(
        await client.put(f"/v1/tasks/{task.id}/status", json={"status": "running"}), 401, "authentication_failed"
    )


async def test_concurrent_reports_roll_up_consistently(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    projects = {f"p{i:02d}": ["build"] for i in range(20)}
    run, phases = await new_run(client, platform, db, plan({"build": (1, projects), "ship": (2, {"p00": ["push"]})}))
    run_id = run["id"]
    build, ship = phases

    async def execute(task: TaskPlan, outcome: str) -> None:
        responses = [
            await put_task(client, platform, task.id, status="running"),
            await put_step(client, platform, task.steps[0].id, status="running"),
            await put_step(client, platform, task.steps[0].id, status=outcome, exit_code=0),
            await put_task(client, platform, task.id, status=outcome),
        ]
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]

    await asyncio.gather(*(execute(t, "success") for t in build.tasks))
    tree = await get(client, platform, run_id)
    assert tree["phases"][0]["status"] == "success"
    assert {t["status"] for t in tree["phases"][0]["tasks"]} == {"success"}
    assert tree["status"] == "running"
    # The last phase: both its reports race with a second, duplicated report.
    await asyncio.gather(
        execute(ship.tasks[0], "success"), put_task(client, platform, ship.tasks[0].id, status="running")
    )
    await wait_for_event(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)
    assert (await get(client, platform, run_id))["status"] == "success"
    assert len(await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id)) == 1


async def test_cancel_running_run_stops_its_work(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    run, phases = await new_run(
        client, platform, db, plan({"test": (1, {"api": ["unit", "lint"]}), "b": (2, {"x": ["y"]})})
    )
    task = phases[0].tasks[0]
    await put_task(client, platform, task.id, status="running")
    await put_step(client, platform, task.steps[0].id, status="running")
    assert (await client.delete(f"/v1/runs/{run['id']}", headers=dev(platform))).status_code == 204
    tree = await get(client, platform, run["id"])
    assert tree["status"] == "cancelled"
    test_phase, b_phase = tree["phases"]
    assert test_phase["tasks"][0]["status"] == "cancelled"
    assert [s["status"] for s in test_phase["tasks"][0]["steps"]] == ["cancelled", "skipped"]
    assert b_phase["status"] == "skipped"
    assert b_phase["tasks"][0]["steps"][0]["status"] == "skipped"
    # The killed step's late report is refused.
    late = await put_step(client, platform, task.steps[0].id, status="failed", exit_code=137)
    assert assert_error(late, 409, "resource_conflict")["details"]["current_status"] == "cancelled"
    assert await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run["id"]) == []


@pytest.mark.parametrize("tasks", [1, 70], ids=["one statement", "COPY"])
async def test_a_stored_tree_reads_back_as_discovered(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any], tasks: int
) -> None:
    """Small trees are stored in one statement, large ones with COPY: both keep every field."""
    phases = [
        PhasePlan(
            name="build",
            group_number=1,
            timeout_seconds=900,
            tasks=[
                TaskPlan(
                    project_name=f"p{t:02d}",
                    project_path=f"services/p{t:02d}",
                    steps=[
                        StepPlan(name="plain", command="make"),
                        StepPlan(
                            name="limited",
                            action="earthly",
                            command="+test",
                            timeout_seconds=60,
                            memory_bytes=2**33,
                            processes=64,
                            network=False,
                            env={"GREETING": 'hé "quoted"', "EMPTY": ""},
                        ),
                    ],
                )
                for t in range(tasks)
            ],
        ),
        PhasePlan(name="empty", group_number=2),
    ]
    run, stored = await new_run(client, platform, db, phases)
    async with db.transaction():
        loaded = await service.load_plan(db, run["id"])
    assert [(p.name, p.group_number, p.timeout_seconds, p.id) for p in loaded] == [
        ("build", 1, 900, stored[0].id),
        ("empty", 2, None, stored[1].id),
    ]
    assert len(loaded[0].tasks) == tasks
    task = loaded[0].tasks[-1]
    assert (task.project_name, task.project_path) == (f"p{tasks - 1:02d}", f"services/p{tasks - 1:02d}")
    plain, limited = task.steps
    assert (plain.name, plain.action, plain.command, plain.position, plain.network, plain.env) == (
        "plain",
        "shell",
        "make",
        0,
        True,
        {},
    )
    assert (limited.action, limited.command, limited.timeout_seconds, limited.position) == ("earthly", "+test", 60, 1)
    assert (limited.memory_bytes, limited.processes, limited.network) == (2**33, 64, False)
    assert limited.env == {"GREETING": 'hé "quoted"', "EMPTY": ""}


async def test_store_discovery_is_idempotent_and_validated(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    run, first = await new_run(client, platform, db, plan({"test": (1, {"api": ["unit"]})}))
    async with db.transaction():
        again = await service.store_discovery(db, run["id"], plan({"other": (1, {"x": ["y"]})}))
        loaded = await service.load_plan(db, run["id"])
    assert [p.id for p in again] == [p.id for p in first] == [p.id for p in loaded]
    assert loaded[0].tasks[0].steps[0].command == "echo unit"
    created = (await client.post("/v1/runs", json=body(unique_repo(), unique_sha()), headers=dev(platform))).json()
    dup = [PhasePlan(name="a", group_number=1), PhasePlan(name="a", group_number=2)]
    with pytest.raises(Exception, match=re.escape("duplicate phase names")):
        async with db.transaction():
            await service.store_discovery(db, created["id"], dup)
