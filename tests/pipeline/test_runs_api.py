"""POST / GET / list / DELETE /v1/runs: spec shapes field by field, and every error."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from typing import Any

import httpx
import msgspec
import nats
import pytest

from forge_common.nats import Names
from forge_dev.testing import Platform, read_events, wait_for_event

from .conftest import unique_repo, unique_sha

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def dev(platform: Platform, sub: str = "alice@example.com") -> dict[str, str]:
    return platform.headers(sub, "developer")


def body(repo: str | None = None, sha: str | None = None, **over: Any) -> dict[str, Any]:
    b = {
        "repository": repo or unique_repo(),
        "branch": "main",
        "commit_sha": sha or unique_sha(),
        "triggered_by": "alice@example.com",
        "trigger_type": "push",
    }
    b.update(over)
    return b


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str)
    assert err["message"]
    assert isinstance(err["details"], dict)
    return dict(err)


async def test_create_run_returns_spec_shape_and_emits_created_event(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    req = body(triggered_by="someone-else@example.com")
    resp = await client.post("/v1/runs", json=req, headers=dev(platform, "alice@example.com"))
    assert resp.status_code == 201, resp.text
    data = resp.json()
    assert set(data) == {"id", "status", "started_at"}
    assert uuid.UUID(data["id"])
    assert data["status"] == "pending"
    assert ISO.match(data["started_at"])
    started = dt.datetime.fromisoformat(data["started_at"])
    assert abs((dt.datetime.now(dt.UTC) - started).total_seconds()) < 30

    event = await wait_for_event(platform, "pipeline.run.created", lambda e: e["data"]["run_id"] == data["id"])
    assert set(event) >= {"event_type", "timestamp", "data"}
    assert event["event_type"] == "pipeline.run.created"
    assert ISO.match(event["timestamp"])
    assert event["data"] == {
        "run_id": data["id"],
        "repository": req["repository"],
        "branch": "main",
        "commit_sha": req["commit_sha"],
        # The authenticated caller, not what the body claims.
        "triggered_by": "alice@example.com",
    }
    events = await read_events(platform, "pipeline.run.created", lambda e: e["data"]["run_id"] == data["id"])
    assert len(events) == 1

    got = (await client.get(f"/v1/runs/{data['id']}", headers=platform.headers("viewer@example.com", "viewer"))).json()
    assert got == {
        "id": data["id"],
        "repository": req["repository"],
        "branch": "main",
        "commit_sha": req["commit_sha"],
        "status": "pending",
        "triggered_by": "alice@example.com",
        "trigger_type": "push",
        "started_at": data["started_at"],
        "completed_at": None,
        "error": None,
        "failed_phase": None,
        "release_error": None,
        "phases": [],
        "artifacts": [],
    }


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"repository": "no-slash"}, "repository"),
        ({"repository": "a/b/c"}, "repository"),
        ({"repository": "-bad/name"}, "repository"),
        ({"repository": "owner/" + "x" * 101}, "repository"),
        ({"repository": ""}, "repository"),
        ({"repository": 42}, "repository"),
        ({"branch": ""}, "branch"),
        ({"branch": "has space"}, "branch"),
        ({"branch": "a..b"}, "branch"),
        ({"branch": "x" * 256}, "branch"),
        ({"branch": "ends.lock"}, "branch"),
        ({"commit_sha": "abc12"}, "commit_sha"),
        ({"commit_sha": "z" * 40}, "commit_sha"),
        ({"commit_sha": "a" * 65}, "commit_sha"),
        ({"trigger_type": "schedule"}, "trigger_type"),
        ({"trigger_type": None}, "trigger_type"),
        ({"triggered_by": "x" * 256}, "triggered_by"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
async def test_create_run_rejects_invalid_fields(
    client: httpx.AsyncClient, platform: Platform, override: dict[str, Any], field: str
) -> None:
    resp = await client.post("/v1/runs", json=body(**override), headers=dev(platform))
    err = assert_error(resp, 400, "invalid_request")
    assert err["details"].get("field") == field, err


@pytest.mark.parametrize("missing", ["repository", "branch", "commit_sha", "trigger_type"])
async def test_create_run_requires_each_field(client: httpx.AsyncClient, platform: Platform, missing: str) -> None:
    req = body()
    del req[missing]
    err = assert_error(await client.post("/v1/runs", json=req, headers=dev(platform)), 400, "invalid_request")
    assert err["details"]["field"] == missing


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[]", b'"string"'])
async def test_create_run_rejects_malformed_bodies(client: httpx.AsyncClient, platform: Platform, raw: bytes) -> None:
    headers = {**dev(platform), "Content-Type": "application/json"}
    assert_error(await client.post("/v1/runs", content=raw, headers=headers), 400, "invalid_request")


async def test_create_run_accepts_short_and_long_shas_and_lowercases(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    repo = unique_repo()
    for sha in ("ABCDEF1", "a" * 64):
        resp = await client.post("/v1/runs", json=body(repo, sha), headers=dev(platform))
        assert resp.status_code == 201, resp.text
        run = (await client.get(f"/v1/runs/{resp.json()['id']}", headers=dev(platform))).json()
        assert run["commit_sha"] == sha.lower()


async def test_duplicate_commit_is_409_with_existing_id(client: httpx.AsyncClient, platform: Platform) -> None:
    req = body()
    first = await client.post("/v1/runs", json=req, headers=dev(platform))
    assert first.status_code == 201
    again = await client.post("/v1/runs", json={**req, "branch": "other"}, headers=dev(platform, "bob@example.com"))
    err = assert_error(again, 409, "resource_conflict")
    assert err["details"]["existing_id"] == first.json()["id"]
    # Case does not make a different commit.
    upper = await client.post("/v1/runs", json={**req, "commit_sha": req["commit_sha"].upper()}, headers=dev(platform))
    assert assert_error(upper, 409, "resource_conflict")["details"]["existing_id"] == first.json()["id"]


async def test_idempotency_key_returns_the_same_run(client: httpx.AsyncClient, platform: Platform) -> None:
    req = body()
    key = f"key-{uuid.uuid4()}"
    headers = {**dev(platform), "Idempotency-Key": key}
    first = await client.post("/v1/runs", json=req, headers=headers)
    second = await client.post("/v1/runs", json=req, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    # Concurrent retries of a new key also converge on one run.
    req2 = body()
    headers2 = {**dev(platform), "Idempotency-Key": f"key-{uuid.uuid4()}"}
    results = await asyncio.gather(*(client.post("/v1/runs", json=req2, headers=headers2) for _ in range(5)))
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    # Wait until both runs' events were relayed, then count them all.
    for sha in (req["commit_sha"], req2["commit_sha"]):
        await wait_for_event(platform, "pipeline.run.created", lambda e, sha=sha: e["data"]["commit_sha"] == sha)
    events = await read_events(
        platform, "pipeline.run.created", lambda e: e["data"]["commit_sha"] in (req["commit_sha"], req2["commit_sha"])
    )
    assert len(events) == 2
    # The same key with a different request is a conflict, not a silent replay.
    other = await client.post("/v1/runs", json=body(), headers=headers)
    assert assert_error(other, 409, "resource_conflict")["details"]["existing_id"] == first.json()["id"]
    bad = await client.post("/v1/runs", json=body(), headers={**dev(platform), "Idempotency-Key": "x" * 300})
    assert_error(bad, 400, "invalid_request")


async def test_authentication_and_permissions(client: httpx.AsyncClient, platform: Platform) -> None:
    assert_error(await client.post("/v1/runs", json=body()), 401, "authentication_failed")
    assert_error(await client.get("/v1/runs?repository=a/b"), 401, "authentication_failed")
    bad = {"Authorization": "Bearer not-a-token"}
    assert_error(await client.get("/v1/runs?repository=a/b", headers=bad), 401, "authentication_failed")
    viewer = platform.headers("v@example.com", "viewer")
    assert_error(await client.post("/v1/runs", json=body(), headers=viewer), 403, "authorization_failed")
    worker = platform.headers("forge-worker", service_account=True)
    assert_error(await client.post("/v1/runs", json=body(), headers=worker), 403, "authorization_failed")
    created = await client.post("/v1/runs", json=body(), headers=dev(platform))
    assert_error(await client.delete(f"/v1/runs/{created.json()['id']}", headers=viewer), 403, "authorization_failed")


async def test_get_unknown_and_malformed_ids(client: httpx.AsyncClient, platform: Platform) -> None:
    missing = uuid.uuid4()
    err = assert_error(await client.get(f"/v1/runs/{missing}", headers=dev(platform)), 404, "resource_not_found")
    assert err["details"]["id"] == str(missing)
    assert_error(await client.get("/v1/runs/not-a-uuid", headers=dev(platform)), 400, "invalid_request")
    assert_error(await client.delete(f"/v1/runs/{missing}", headers=dev(platform)), 404, "resource_not_found")
    assert_error(await client.delete("/v1/runs/123", headers=dev(platform)), 400, "invalid_request")


async def test_list_runs_filters_paginates_and_counts(client: httpx.AsyncClient, platform: Platform) -> None:
    repo = unique_repo()
    ids: list[str] = []
    for i in range(7):
        resp = await client.post(
            "/v1/runs", json=body(repo, branch="main" if i % 2 == 0 else "feature/x"), headers=dev(platform)
        )
        ids.append(resp.json()["id"])
    await client.post("/v1/runs", json=body(), headers=dev(platform))  # another repository
    headers = platform.headers("viewer@example.com", "viewer")

    page = (await client.get("/v1/runs", params={"repository": repo}, headers=headers)).json()
    assert set(page) == {"runs", "total", "limit", "offset", "next_cursor"}
    assert page["total"] == 7
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert [r["id"] for r in page["runs"]] == list(reversed(ids))  # newest first
    first = page["runs"][0]
    assert set(first) == {"id", "repository", "commit_sha", "status", "started_at"}
    assert first["repository"] == repo
    assert first["status"] == "pending"
    assert ISO.match(first["started_at"])

    p2 = (await client.get("/v1/runs", params={"repository": repo, "limit": 3, "offset": 3}, headers=headers)).json()
    assert [r["id"] for r in p2["runs"]] == list(reversed(ids))[3:6]
    assert (p2["total"], p2["limit"], p2["offset"]) == (7, 3, 3)
    beyond = (await client.get("/v1/runs", params={"repository": repo, "offset": 50}, headers=headers)).json()
    assert beyond["runs"] == []
    assert beyond["total"] == 7

    main = (await client.get("/v1/runs", params={"repository": repo, "branch": "main"}, headers=headers)).json()
    assert main["total"] == 4
    assert {r["id"] for r in main["runs"]} == {ids[i] for i in (0, 2, 4, 6)}
    await client.delete(f"/v1/runs/{ids[0]}", headers=dev(platform))
    cancelled = (
        await client.get("/v1/runs", params={"repository": repo, "status": "cancelled"}, headers=headers)
    ).json()
    assert [r["id"] for r in cancelled["runs"]] == [ids[0]]
    assert cancelled["total"] == 1
    assert cancelled["runs"][0]["status"] == "cancelled"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "repository"),
        ({"repository": "not-a-repo"}, "repository"),
        ({"repository": "a/b", "limit": "0"}, "limit"),
        ({"repository": "a/b", "limit": "101"}, "limit"),
        ({"repository": "a/b", "limit": "ten"}, "limit"),
        ({"repository": "a/b", "offset": "-1"}, "offset"),
        ({"repository": "a/b", "status": "done"}, "status"),
        ({"repository": "a/b", "branch": "bad branch"}, "branch"),
    ],
)
async def test_list_runs_rejects_bad_parameters(
    client: httpx.AsyncClient, platform: Platform, params: dict[str, str], field: str
) -> None:
    resp = await client.get("/v1/runs", params=params, headers=dev(platform))
    assert assert_error(resp, 400, "invalid_request")["details"]["field"] == field


async def test_cancel_run_skips_work_tells_workers_and_refuses_twice(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    created = (await client.post("/v1/runs", json=body(), headers=dev(platform))).json()
    run_id = created["id"]
    names = Names(platform.nats_prefix)
    nc = await nats.connect(platform.nats_url)
    try:
        sub = await nc.subscribe(names.subject(f"pipeline.cancel.{run_id}"))
        resp = await client.delete(f"/v1/runs/{run_id}", headers=dev(platform, "bob@example.com"))
        assert resp.status_code == 204
        assert resp.content == b""
        msg = await sub.next_msg(timeout=5)
        assert msgspec.json.decode(msg.data)["run_id"] == run_id
    finally:
        await nc.close()
    run = (await client.get(f"/v1/runs/{run_id}", headers=dev(platform))).json()
    assert run["status"] == "cancelled"
    assert ISO.match(run["completed_at"])
    again = await client.delete(f"/v1/runs/{run_id}", headers=dev(platform))
    assert assert_error(again, 409, "resource_conflict")["details"]["status"] == "cancelled"
    # Cancellation emits no pipeline events.
    assert await read_events(platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id) == []
    assert await read_events(platform, "pipeline.run.failed", lambda e: e["data"]["run_id"] == run_id) == []


async def test_unknown_route_and_method_use_the_envelope(client: httpx.AsyncClient, platform: Platform) -> None:
    assert_error(await client.get("/v1/nope", headers=dev(platform)), 404, "resource_not_found")
    resp = await client.patch("/v1/runs", headers=dev(platform))
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"


async def test_shared_platform_gateway_serves_the_runs_api(platform: Platform) -> None:
    """The platform's own gateway and pipeline (dispatcher on): create, read and list."""
    req = body()
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as gw:
        created = await gw.post("/v1/runs", json=req, headers=dev(platform))
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        got = await gw.get(f"/v1/runs/{run_id}", headers=dev(platform))
        assert got.status_code == 200
        assert got.json()["commit_sha"] == req["commit_sha"]
        # The dispatcher may already be working on it.
        assert got.json()["status"] in ("pending", "running", "failed")
        listed = (await gw.get("/v1/runs", params={"repository": req["repository"]}, headers=dev(platform))).json()
        assert [r["id"] for r in listed["runs"]] == [run_id]
        assert listed["total"] == 1
