"""Deployments through the gateway, against the real release and approval services, a real
GitOps repository and the events stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployment.support import APPROVER, DEVELOPER, clone, create_release, deploy, git, unique_repository
from forge_dev.testing import Platform, read_events, wait_for_event

UUID_LEN = 36


async def _wait_completed(platform: Platform, deployment_id: str) -> dict[str, Any]:
    return await wait_for_event(
        platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == deployment_id, timeout=30
    )


def _pointer(repo_dir: Path, revision: str, path: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(git("show", f"{revision}:{path}", cwd=repo_dir))
    return doc


async def test_deploying_release_1_then_2_supersedes_1_and_commits_both_pointers(
    platform: Platform, gw: httpx.AsyncClient, tmp_path: Path
) -> None:
    repository = unique_repository()
    r1 = await create_release(gw, platform, repository, "api")
    r2 = await create_release(gw, platform, repository, "api")
    assert (r1["release_number"], r2["release_number"]) == (1, 2)

    first = await deploy(gw, platform, r1["id"], "dev")
    assert first.status_code == 201, first.text
    d1 = first.json()
    assert d1["status"] == "pending"
    assert d1["id"] == d1["deployment_id"]
    assert len(d1["deployment_id"]) == UUID_LEN
    assert len(d1["gitops_commit_sha"]) == 40

    created = await wait_for_event(
        platform, "deployment.created", lambda e: e["data"]["deployment_id"] == d1["id"], timeout=30
    )
    assert created["data"] == {
        "deployment_id": d1["id"],
        "release_id": r1["id"],
        "environment": "dev",
        "deployed_by": DEVELOPER,
        "gitops_commit_sha": d1["gitops_commit_sha"],
        "repository": repository,
        "project": "api",
    }
    completed = await _wait_completed(platform, d1["id"])
    assert completed["data"]["environment"] == "dev"
    assert (completed["data"]["repository"], completed["data"]["project"]) == (repository, "api")
    assert completed["data"]["status"] == "active"
    assert isinstance(completed["data"]["reconciliation_duration_seconds"], int)
    assert completed["data"]["reconciliation_duration_seconds"] >= 0

    viewer = platform.headers("viewer@acme.io", "viewer")
    current = await gw.get(f"/v1/deployments/dev/{repository}/api", headers=viewer)
    assert current.status_code == 200, current.text
    assert current.json()["deployment_id"] == d1["id"]

    second = await deploy(gw, platform, r2["id"], "dev")
    assert second.status_code == 201, second.text
    d2 = second.json()
    await _wait_completed(platform, d2["id"])

    # The encoded form of {repo} answers the same as the two-segment form.
    owner, name = repository.split("/")
    current = await gw.get(f"/v1/deployments/dev/{owner}%2F{name}/api", headers=viewer)
    assert current.status_code == 200, current.text
    body = current.json()
    assert body["deployment_id"] == d2["id"]
    assert body["release_id"] == r2["id"]
    assert body["release_number"] == 2
    assert body["environment"] == "dev"
    assert body["status"] == "active"
    assert body["deployed_by"] == DEVELOPER
    assert body["gitops_commit_sha"] == d2["gitops_commit_sha"]
    assert body["deployed_at"].endswith("Z")

    history = await gw.get(f"/v1/deployments/dev/{repository}/api/history", headers=viewer)
    assert history.status_code == 200, history.text
    page = history.json()
    assert page["total"] == 2
    assert (page["limit"], page["offset"]) == (20, 0)
    assert [(d["id"], d["release_number"], d["status"]) for d in page["deployments"]] == [
        (d2["id"], 2, "active"),
        (d1["id"], 1, "superseded"),
    ]
    assert all(d["deployed_by"] == DEVELOPER for d in page["deployments"])

    # The GitOps repository holds both commits, newest first, each with its own pointer.
    checkout = clone(platform.env()["FORGE_GITOPS_URL"], tmp_path / "gitops")
    path = f"environments/dev/{repository}/api/release.yaml"
    log = git("log", "--format=%H %s", "--", path, cwd=checkout).splitlines()
    assert [line.split(" ", 1)[0] for line in log] == [d2["gitops_commit_sha"], d1["gitops_commit_sha"]]
    assert log[0].split(" ", 1)[1] == f"Deploy {repository} api release 2 ({r2['commit_sha'][:12]}) to dev"
    for deployment, release in ((d1, r1), (d2, r2)):
        doc = _pointer(checkout, deployment["gitops_commit_sha"], path)
        assert doc["kind"] == "ReleasePointer"
        assert doc["spec"]["release"] == release["commit_sha"]
        assert doc["spec"]["releaseNumber"] == release["release_number"]
        assert doc["spec"]["aliases"] == [a["alias"] for a in release["aliases"]]
        assert doc["spec"]["ociUri"] == release["oci_uri"]
        assert doc["spec"]["deployedBy"] == DEVELOPER
        assert doc["metadata"]["annotations"]["forge.dev/deployment-id"] == deployment["id"]
    git("merge-base", "--is-ancestor", d1["gitops_commit_sha"], d2["gitops_commit_sha"], cwd=checkout)

    # Rollback is a deployment of the older release: it becomes active, history shows it.
    rollback = await deploy(gw, platform, r1["id"], "dev")
    assert rollback.status_code == 201, rollback.text
    d3 = rollback.json()
    await _wait_completed(platform, d3["id"])
    page = (await gw.get(f"/v1/deployments/dev/{repository}/api/history?limit=2", headers=viewer)).json()
    assert page["total"] == 3
    assert [(d["release_number"], d["status"]) for d in page["deployments"]] == [(1, "active"), (2, "superseded")]
    older = (await gw.get(f"/v1/deployments/dev/{repository}/api/history?limit=2&offset=2", headers=viewer)).json()
    assert [(d["id"], d["status"]) for d in older["deployments"]] == [(d1["id"], "superseded")]
    # The same page by cursor; the last page has no next one; a cursor of another target is refused.
    assert older["next_cursor"] is None
    history = f"/v1/deployments/dev/{repository}/api/history"
    by_cursor = (await gw.get(history, params={"limit": "2", "cursor": page["next_cursor"]}, headers=viewer)).json()
    assert by_cursor["deployments"] == older["deployments"]
    assert by_cursor["next_cursor"] is None
    elsewhere = await gw.get(
        f"/v1/deployments/staging/{repository}/api/history", params={"cursor": page["next_cursor"]}, headers=viewer
    )
    assert elsewhere.status_code == 400
    assert elsewhere.json()["error"]["details"]["field"] == "cursor"
    current = (await gw.get(f"/v1/deployments/dev/{repository}/api", headers=viewer)).json()
    assert (current["deployment_id"], current["release_number"]) == (d3["id"], 1)

    # Exactly one completion event per deployment.
    for d in (d1, d2, d3):
        events = await read_events(
            platform, "deployment.completed", lambda e, i=d["id"]: e["data"]["deployment_id"] == i
        )
        assert len(events) == 1


async def test_production_requires_an_active_approval(platform: Platform, gw: httpx.AsyncClient) -> None:
    repository = unique_repository()
    release = await create_release(gw, platform, repository, "api")
    other = await create_release(gw, platform, repository, "web")
    approver = platform.headers(APPROVER, "approver")

    missing = await deploy(gw, platform, release["id"], "production")
    assert missing.status_code == 400, missing.text
    assert missing.json()["error"]["code"] == "invalid_request"
    assert missing.json()["error"]["details"]["field"] == "approval_id"

    async def approve(release_id: str, expires_at: str | None = None) -> str:
        body: dict[str, Any] = {"release_id": release_id, "environment": "production", "justification": "tested"}
        if expires_at:
            body["expires_at"] = expires_at
        resp = await gw.post("/v1/approvals", json=body, headers=approver)
        assert resp.status_code == 201, resp.text
        approval_id: str = resp.json()["approval_id"]
        return approval_id

    async def refused(approval_id: str, reason: str) -> None:
        resp = await deploy(gw, platform, release["id"], "production", approval_id)
        assert resp.status_code == 403, resp.text
        error = resp.json()["error"]
        assert error["code"] == "authorization_failed"
        assert error["details"]["reason"] == reason
        assert approval_id in error["message"]

    # Expired: an approval that ends in a moment, checked once the approval service says so.
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)).isoformat().replace("+00:00", "Z")
    expiring = await approve(release["id"], soon)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        check = await gw.get(
            "/v1/approvals/check",
            params={"approval_id": expiring, "release_id": release["id"], "environment": "production"},
            headers=approver,
        )
        if check.json()["result"] == "expired":
            break
        assert asyncio.get_running_loop().time() < deadline, check.text
        await asyncio.sleep(0.2)
    await refused(expiring, "expired")

    revoked = await approve(release["id"])
    resp = await gw.request("DELETE", f"/v1/approvals/{revoked}", json={"reason": "changed my mind"}, headers=approver)
    assert resp.status_code == 200, resp.text
    await refused(revoked, "revoked")

    elsewhere = await approve(other["id"])
    await refused(elsewhere, "mismatch")
    await refused(str(uuid.uuid4()), "not_found")

    valid = await approve(release["id"])
    ok = await deploy(gw, platform, release["id"], "production", valid)
    assert ok.status_code == 201, ok.text
    await _wait_completed(platform, ok.json()["id"])
    current = await gw.get(f"/v1/deployments/production/{repository}/api", headers=approver)
    assert current.status_code == 200
    assert current.json()["approval_id"] == valid
    assert current.json()["status"] == "active"
    # Nothing refused reached the history.
    history = (await gw.get(f"/v1/deployments/production/{repository}/api/history", headers=approver)).json()
    assert history["total"] == 1


async def test_bad_requests_get_clear_4xx_envelopes(platform: Platform, gw: httpx.AsyncClient) -> None:
    dev = platform.headers(DEVELOPER, "developer")
    cases: list[tuple[Any, int, str]] = [
        ({"release_id": "nope", "environment": "dev"}, 400, "release_id"),
        ({"release_id": str(uuid.uuid4()), "environment": "qa"}, 400, "environment"),
        ({"environment": "dev"}, 400, "release_id"),
    ]
    for body, status, field in cases:
        resp = await gw.post("/v1/deployments", json=body, headers=dev)
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["code"] == "invalid_request"
        assert resp.json()["error"]["details"].get("field") == field, resp.text
    for raw in (b"{not json", b"", b"[]"):
        resp = await gw.post("/v1/deployments", content=raw, headers={**dev, "Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_request"

    missing = await deploy(gw, platform, str(uuid.uuid4()), "dev")
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["code"] == "resource_not_found"

    viewer = platform.headers("viewer@acme.io", "viewer")
    forbidden = await gw.post(
        "/v1/deployments", json={"release_id": str(uuid.uuid4()), "environment": "dev"}, headers=viewer
    )
    assert forbidden.status_code == 403
    worker = platform.headers("forge-worker", "worker", service_account=True)
    forbidden = await gw.post(
        "/v1/deployments", json={"release_id": str(uuid.uuid4()), "environment": "dev"}, headers=worker
    )
    assert forbidden.status_code == 403

    repository = unique_repository()
    none = await gw.get(f"/v1/deployments/dev/{repository}/api", headers=viewer)
    assert none.status_code == 404
    assert none.json()["error"]["code"] == "resource_not_found"
    empty = await gw.get(f"/v1/deployments/dev/{repository}/api/history", headers=viewer)
    assert empty.status_code == 200
    assert empty.json() == {"deployments": [], "total": 0, "limit": 20, "offset": 0, "next_cursor": None}
    # Issue 10: a limit past the cap is refused like everywhere else, no longer silently clamped.
    for query, field in (("limit=0", "limit"), ("limit=1000", "limit"), ("limit=x", "limit"), ("offset=-1", "offset")):
        bad = await gw.get(f"/v1/deployments/dev/{repository}/api/history?{query}", headers=viewer)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["details"]["field"] == field
    unknown_env = await gw.get(f"/v1/deployments/qa/{repository}/api", headers=viewer)
    assert unknown_env.status_code == 400
    assert unknown_env.json()["error"]["details"]["field"] == "environment"
    wrong_shape = await gw.get("/v1/deployments/dev/only-one-segment", headers=viewer)
    assert wrong_shape.status_code == 404
    anonymous = await gw.get(f"/v1/deployments/dev/{repository}/api")
    assert anonymous.status_code == 401


async def test_twenty_concurrent_deployments_from_two_replicas_land_as_twenty_commits(
    platform: Platform, gw: httpx.AsyncClient, tmp_path: Path
) -> None:
    repository = unique_repository()
    releases = await asyncio.gather(*(create_release(gw, platform, repository, f"svc{i}") for i in range(20)))
    replica = platform.start_process("deployment", env={"FORGE_DB_POOL_MIN": "1", "FORGE_DB_POOL_MAX": "5"})
    try:
        async with httpx.AsyncClient(base_url=replica.url, timeout=60.0) as direct:

            async def one(i: int) -> httpx.Response:
                # Half through the gateway (first instance), half straight to the second replica.
                client = gw if i % 2 == 0 else direct
                return await deploy(client, platform, releases[i]["id"], "staging")

            responses = await asyncio.gather(*(one(i) for i in range(20)))
    finally:
        replica.stop()
    assert [r.status_code for r in responses] == [201] * 20, [r.text for r in responses if r.status_code != 201]
    shas = [r.json()["gitops_commit_sha"] for r in responses]
    assert len(set(shas)) == 20

    checkout = clone(platform.env()["FORGE_GITOPS_URL"], tmp_path / "gitops")
    history = set(git("rev-list", "HEAD", cwd=checkout).split())
    assert set(shas) <= history
    for i, resp in enumerate(responses):
        path = f"environments/staging/{repository}/svc{i}/release.yaml"
        doc = _pointer(checkout, "HEAD", path)
        assert doc["metadata"]["annotations"]["forge.dev/deployment-id"] == resp.json()["id"]
        assert doc["spec"]["release"] == releases[i]["commit_sha"]
        # Each commit changed exactly its own pointer.
        changed = git("show", "--name-only", "--format=", shas[i], cwd=checkout).split()
        assert changed == [path]

    viewer = platform.headers("viewer@acme.io", "viewer")
    for i, resp in enumerate(responses):
        await _wait_completed(platform, resp.json()["id"])
        current = await gw.get(f"/v1/deployments/staging/{repository}/svc{i}", headers=viewer)
        assert current.json()["deployment_id"] == resp.json()["id"]
