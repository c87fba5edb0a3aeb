"""POST /v1/deployments/promote through the gateway: per-project results as POST /v1/deployments
answers them, production gated by one approval per release."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
from deployment.support import APPROVER, DEVELOPER, create_release, deploy

from forge_dev.testing import Platform, wait_for_event


async def _deployed_to_dev(gw: httpx.AsyncClient, platform: Platform, repository: str, project: str) -> str:
    release_id: str = (await create_release(gw, platform, repository, project))["id"]
    resp = await deploy(gw, platform, release_id, "dev")
    assert resp.status_code == 201, resp.text
    deployment_id = resp.json()["deployment_id"]
    await wait_for_event(
        platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == deployment_id, timeout=30
    )
    return release_id


async def _targets(db: psycopg.AsyncConnection[Any], repository: str) -> set[tuple[str, str, str]]:
    cur = await db.execute(
        "SELECT environment, project, release_id::text AS release_id FROM deployment.deployments "
        "WHERE repository_key = lower(%s) AND environment <> 'dev'",
        (repository,),
    )
    return {(row["environment"], row["project"], row["release_id"]) for row in await cur.fetchall()}


async def test_promote_some_projects_then_all_to_production_with_one_approval_per_release(
    gw: httpx.AsyncClient, platform: Platform, platform_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = f"acme{uuid.uuid4().hex[:10]}/shop"
    developer = platform.headers(DEVELOPER, "developer")
    api = await _deployed_to_dev(gw, platform, repository, "api")
    web = await _deployed_to_dev(gw, platform, repository, "web")

    staging = await gw.post(
        "/v1/deployments/promote",
        json={
            "repository": repository,
            "projects": ["api", "ghost"],
            "from_environment": "dev",
            "to_environment": "staging",
        },
        headers=developer,
    )

    assert staging.status_code == 200, staging.text
    answer = staging.json()
    assert [(item["id"], item["status"]) for item in answer["results"]] == [("api", 201), ("ghost", 404)]
    accepted = answer["results"][0]["result"]
    assert accepted["status"] == "pending"
    assert len(accepted["gitops_commit_sha"]) == 40
    ghost = await gw.get(f"/v1/deployments/dev/{repository}/ghost", headers=developer)
    assert ghost.status_code == 404
    assert ghost.json() == {"error": answer["results"][1]["error"]}

    approval = await gw.post(
        "/v1/approvals",
        json={"release_id": api, "environment": "production", "justification": "CAB-9"},
        headers=platform.headers(APPROVER, "approver"),
    )
    assert approval.status_code == 201, approval.text
    approval_id = approval.json()["approval_id"]

    production = await gw.post(
        "/v1/deployments/promote",
        json={
            "repository": repository,
            "from_environment": "dev",
            "to_environment": "production",
            "approvals": {api: approval_id, web: approval_id},
        },
        headers=developer,
    )

    assert production.status_code == 200, production.text
    results = {item["id"]: item for item in production.json()["results"]}
    assert sorted(results) == ["api", "web"]
    assert results["api"]["status"] == 201
    # web's "approval" is api's: refused exactly as a single deployment with it is.
    assert results["web"]["status"] == 403
    single = await deploy(gw, platform, web, "production", approval_id)
    assert single.status_code == 403
    assert single.json() == {"error": results["web"]["error"]}
    # Without an approval at all: the single call's 400.
    unapproved = await gw.post(
        "/v1/deployments/promote",
        json={"repository": repository, "projects": ["web"], "from_environment": "dev", "to_environment": "production"},
        headers=developer,
    )
    assert [item["status"] for item in unapproved.json()["results"]] == [400]
    assert unapproved.json()["results"][0]["error"] == (await deploy(gw, platform, web, "production")).json()["error"]
    assert await _targets(platform_db, repository) == {("staging", "api", api), ("production", "api", api)}


async def test_bad_promotions_are_refused_whole(
    gw: httpx.AsyncClient, platform: Platform, platform_db: psycopg.AsyncConnection[Any]
) -> None:
    repository = f"acme{uuid.uuid4().hex[:10]}/shop"
    developer = platform.headers(DEVELOPER, "developer")
    base = {"repository": repository, "from_environment": "dev", "to_environment": "staging"}
    for body, status in [
        ({**base, "projects": [f"p{i}" for i in range(101)]}, 400),
        ({**base, "projects": []}, 400),
        ({**base, "to_environment": "dev"}, 400),
        ({**base, "to_environment": "moon"}, 400),
        ({**base, "approvals": {"x": "y"}}, 400),
        (base, 404),  # nothing of the repository runs in dev
    ]:
        resp = await gw.post("/v1/deployments/promote", json=body, headers=developer)
        assert resp.status_code == status, (body, resp.text)
    viewer = await gw.post(
        "/v1/deployments/promote", json={**base, "projects": ["api"]}, headers=platform.headers("v@acme.io", "viewer")
    )
    assert viewer.status_code == 403
    assert await _targets(platform_db, repository) == set()
