"""POST /v1/runs/cancel through the gateway: per-run results as DELETE /v1/runs/{id} answers them."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg

from forge_dev.testing import Platform

DEVELOPER = "dana@acme.io"


def _repo() -> str:
    return f"acme-batch/repo-{uuid.uuid4().hex[:10]}"


async def _run(gw: httpx.AsyncClient, platform: Platform, repository: str, branch: str = "main") -> str:
    resp = await gw.post(
        "/v1/runs",
        json={
            "repository": repository,
            "branch": branch,
            "commit_sha": uuid.uuid4().hex + uuid.uuid4().hex[:8],
            "trigger_type": "manual",
        },
        headers=platform.headers(DEVELOPER, "developer"),
    )
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["id"]
    return run_id


async def _statuses(db: psycopg.AsyncConnection[Any], repository: str) -> dict[str, str]:
    cur = await db.execute(
        "SELECT id::text AS id, status::text AS status FROM pipeline.runs WHERE repository = %s", (repository,)
    )
    return {row["id"]: row["status"] for row in await cur.fetchall()}


async def test_mixed_batch_answers_per_run_as_single_cancels_and_cancels_exactly_the_valid_ones(
    gw: httpx.AsyncClient, platform: Platform, runs_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = _repo()
    headers = platform.headers(DEVELOPER, "developer")
    first, second, finished, untouched = [await _run(gw, platform, repository) for _ in range(4)]
    assert (await gw.delete(f"/v1/runs/{finished}", headers=headers)).status_code == 204
    missing = str(uuid.uuid4())
    ids = [first, finished, missing, "not-a-run-id", second]

    resp = await gw.post("/v1/runs/cancel", json={"ids": ids}, headers=headers)

    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["dry_run"] is False
    assert (answer["succeeded"], answer["failed"]) == (2, 3)
    assert [item["id"] for item in answer["results"]] == ids
    assert [item["status"] for item in answer["results"]] == [204, 409, 404, 400, 204]
    # A refused item carries exactly the error envelope the single call answers.
    for item in answer["results"]:
        if item["status"] >= 400:
            single = await gw.delete(f"/v1/runs/{item['id']}", headers=headers)
            assert single.status_code == item["status"]
            assert single.json() == {"error": item["error"]}
        else:
            assert "error" not in item
    assert await _statuses(runs_db, repository) == {
        first: "cancelled",
        second: "cancelled",
        finished: "cancelled",
        untouched: "pending",
    }


async def test_filter_by_branch_dry_run_changes_nothing_then_cancels_that_branch_only(
    gw: httpx.AsyncClient, platform: Platform, runs_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = _repo()
    headers = platform.headers(DEVELOPER, "developer")
    stale = [await _run(gw, platform, repository, "feature/old") for _ in range(2)]
    main = await _run(gw, platform, repository, "main")
    request = {"repository": repository, "branch": "feature/old"}

    dry = await gw.post("/v1/runs/cancel", json={**request, "dry_run": True}, headers=headers)

    assert dry.status_code == 200, dry.text
    assert dry.json() == {
        "dry_run": True,
        "succeeded": 2,
        "failed": 0,
        "results": [{"id": run_id, "status": 204} for run_id in stale],
    }
    assert set((await _statuses(runs_db, repository)).values()) == {"pending"}

    done = await gw.post("/v1/runs/cancel", json=request, headers=headers)

    assert done.status_code == 200, done.text
    assert [(item["id"], item["status"]) for item in done.json()["results"]] == [(run_id, 204) for run_id in stale]
    assert await _statuses(runs_db, repository) == {stale[0]: "cancelled", stale[1]: "cancelled", main: "pending"}
    # Nothing of that branch is active any more: the same filter matches nothing.
    again = await gw.post("/v1/runs/cancel", json=request, headers=headers)
    assert again.json() == {"dry_run": False, "succeeded": 0, "failed": 0, "results": []}


async def test_bad_batches_are_refused_whole_and_change_nothing(
    gw: httpx.AsyncClient, platform: Platform, runs_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = _repo()
    run_id = await _run(gw, platform, repository)
    developer = platform.headers(DEVELOPER, "developer")
    too_many = {"ids": [run_id] + [str(uuid.uuid4()) for _ in range(100)]}
    for body, field in [
        (too_many, "ids"),
        ({"ids": []}, "ids"),
        ({}, "ids"),
        ({"ids": [run_id], "repository": repository}, "ids"),
        ({"ids": [run_id], "branch": "main"}, "ids"),
        ({"repository": "not a repository"}, "repository"),
    ]:
        resp = await gw.post("/v1/runs/cancel", json=body, headers=developer)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["code"] == "invalid_request"
        assert resp.json()["error"]["details"]["field"] == field
    assert (
        await gw.post("/v1/runs/cancel", json={"ids": [run_id], "status": "failed"}, headers=developer)
    ).status_code == 400
    viewer = await gw.post("/v1/runs/cancel", json={"ids": [run_id]}, headers=platform.headers("vic@acme.io", "viewer"))
    assert viewer.status_code == 403
    assert viewer.json()["error"]["code"] == "authorization_failed"
    assert await _statuses(runs_db, repository) == {run_id: "pending"}


async def test_the_cancel_path_is_an_operation_not_a_run_id(gw: httpx.AsyncClient, platform: Platform) -> None:
    # Neither read nor deleted as a run called "cancel": the path only takes POST.
    for method in ("GET", "DELETE"):
        resp = await gw.request(method, "/v1/runs/cancel", headers=platform.headers(DEVELOPER, "developer"))
        assert resp.status_code == 405, (method, resp.text)
        assert resp.json()["error"]["code"] == "method_not_allowed"
