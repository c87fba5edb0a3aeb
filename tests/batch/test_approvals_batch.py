"""POST /v1/approvals/batch through the gateway: per-release results as POST /v1/approvals answers them."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
from deployment.support import APPROVER, RELEASER, create_release

from forge_dev.testing import Platform

JUSTIFICATION = "CAB-77: weekly release train"


async def _approvals(db: psycopg.AsyncConnection[Any], release_ids: list[str]) -> set[tuple[str, str]]:
    cur = await db.execute(
        "SELECT release_id::text AS release_id, approver FROM approval.approvals WHERE release_id::text = ANY(%s)",
        (release_ids,),
    )
    return {(row["release_id"], row["approver"]) for row in await cur.fetchall()}


async def test_mixed_batch_answers_per_release_as_single_approvals_and_records_exactly_the_valid_ones(
    gw: httpx.AsyncClient, platform: Platform, platform_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = f"acme{uuid.uuid4().hex[:10]}/shop"
    approver = platform.headers(APPROVER, "approver")
    fresh = (await create_release(gw, platform, repository, "api"))["id"]
    # Released by the approver: approving it would be self-approval.
    own = (await create_release(gw, platform, repository, "web", creator=APPROVER))["id"]
    approved = (await create_release(gw, platform, repository, "worker"))["id"]
    first = await gw.post(
        "/v1/approvals",
        json={"release_id": approved, "environment": "production", "justification": "earlier"},
        headers=approver,
    )
    assert first.status_code == 201, first.text
    missing = str(uuid.uuid4())
    release_ids = [fresh, own, approved, missing, "not-a-release"]

    resp = await gw.post(
        "/v1/approvals/batch",
        json={"release_ids": release_ids, "environment": "production", "justification": JUSTIFICATION},
        headers=approver,
    )

    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert [item["id"] for item in answer["results"]] == release_ids
    assert [item["status"] for item in answer["results"]] == [201, 403, 409, 404, 400]
    assert (answer["succeeded"], answer["failed"]) == (1, 4)
    created = answer["results"][0]["result"]
    assert created["release_id"] == fresh
    assert created["approver"] == APPROVER
    assert created["status"] == "active"
    assert created["justification"] == JUSTIFICATION
    assert answer["results"][1]["error"]["details"]["reason"] == "self_approval"
    for item in answer["results"][1:]:
        single = await gw.post(
            "/v1/approvals",
            json={"release_id": item["id"], "environment": "production", "justification": JUSTIFICATION},
            headers=approver,
        )
        assert single.status_code == item["status"]
        assert single.json() == {"error": item["error"]}
    # The one approval is the batch's: readable as any other.
    current = await gw.get(f"/v1/approvals/{fresh}/production", headers=platform.headers(RELEASER, "viewer"))
    assert current.json()["approval_id"] == created["approval_id"]
    assert await _approvals(platform_db, [fresh, own, approved]) == {(fresh, APPROVER), (approved, APPROVER)}


async def test_an_oversized_or_unauthorised_batch_is_refused_whole(
    gw: httpx.AsyncClient, platform: Platform, platform_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = f"acme{uuid.uuid4().hex[:10]}/shop"
    release = (await create_release(gw, platform, repository, "api"))["id"]
    body = {"environment": "staging", "justification": JUSTIFICATION}

    too_many = await gw.post(
        "/v1/approvals/batch",
        json={**body, "release_ids": [release] + [str(uuid.uuid4()) for _ in range(100)]},
        headers=platform.headers(APPROVER, "approver"),
    )
    assert too_many.status_code == 400, too_many.text
    assert too_many.json()["error"]["details"] == {"field": "release_ids", "limit": 100, "count": 101}
    empty = await gw.post(
        "/v1/approvals/batch", json={**body, "release_ids": []}, headers=platform.headers(APPROVER, "approver")
    )
    assert empty.status_code == 400
    developer = await gw.post(
        "/v1/approvals/batch",
        json={**body, "release_ids": [release]},
        headers=platform.headers("dana@acme.io", "developer"),
    )
    assert developer.status_code == 403
    assert await _approvals(platform_db, [release]) == set()
