"""GitHub deployments and release statuses, as a GitHub-side observer sees them.

Everything goes through the gateway; GitHub is a local server speaking its REST API that
records each call in arrival order (``github_api.FakeGitHub``).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx

from forge_dev.testing import Platform

from .conftest import GitHubForge
from .github_api import Call, FakeGitHub

RELEASER = "gh-releaser@acme.io"
DEVELOPER = "gh-deployer@acme.io"
APPROVER = "gh-approver@acme.io"


async def release(forge: httpx.AsyncClient, platform: Platform, repository: str, project: str) -> dict[str, Any]:
    resp = await forge.post(
        "/v1/releases",
        json={"repository": repository, "project": project, "commit_sha": secrets.token_hex(20), "artifacts": []},
        headers=platform.headers(RELEASER, "developer"),
    )
    assert resp.status_code == 201, resp.text
    full = await forge.get(f"/v1/releases/{resp.json()['id']}", headers=platform.headers(RELEASER, "viewer"))
    assert full.status_code == 200, full.text
    body: dict[str, Any] = full.json()
    return body


async def deploy(
    forge: httpx.AsyncClient, platform: Platform, release_id: str, environment: str, approval_id: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"release_id": release_id, "environment": environment}
    if approval_id:
        body["approval_id"] = approval_id
    return await forge.post("/v1/deployments", json=body, headers=platform.headers(DEVELOPER, "developer"))


async def approve(forge: httpx.AsyncClient, platform: Platform, release_id: str) -> str:
    body = {"release_id": release_id, "environment": "production", "justification": "integration test"}
    resp = await forge.post("/v1/approvals", json=body, headers=platform.headers(APPROVER, "approver"))
    assert resp.status_code == 201, resp.text
    approval_id: str = resp.json()["approval_id"]
    return approval_id


def deployment_calls(repository: str) -> Any:
    return lambda c: c["repository"] == repository and c["kind"] in ("deployment", "deployment_status")


def timeline(calls: list[Call]) -> list[tuple[str, str, str]]:
    """``(kind, forge deployment id, state)`` of each call; creation has the state "created"."""
    return [
        (c["kind"], c["payload"]["forge_deployment_id"], "created")
        if c["kind"] == "deployment"
        else (c["kind"], c["forge_deployment_id"], c["state"])
        for c in calls
    ]


async def active(forge: httpx.AsyncClient, platform: Platform, environment: str, repository: str, project: str) -> str:
    """The active deployment of a target (GitHub heard "success" only after it became active)."""
    resp = await forge.get(
        f"/v1/deployments/{environment}/{repository}/{project}", headers=platform.headers(DEVELOPER, "viewer")
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["deployment_id"])


async def test_dev_deployments_and_release_statuses_reach_github_in_order(
    platform: Platform, forge: httpx.AsyncClient, fake_github: FakeGitHub
) -> None:
    repository = f"acme{uuid.uuid4().hex[:8]}/shop"
    first = await release(forge, platform, repository, "api")
    second = await release(forge, platform, repository, "api")

    # Each created release: a commit status forge/release/<project> on its commit, with a link.
    statuses = await fake_github.wait_for(lambda c: c["repository"] == repository and c["kind"] == "commit_status", 2)
    assert [(s["sha"], s["context"], s["state"]) for s in statuses] == [
        (first["commit_sha"], "forge/release/api", "success"),
        (second["commit_sha"], "forge/release/api", "success"),
    ]
    assert statuses[0]["description"] == f"Release {first['release_number']} of api"
    assert statuses[0]["target_url"] == (
        f"https://forge.example.com/v1/releases/{repository}/api/{first['release_number']}"
    )

    one = await deploy(forge, platform, first["id"], "dev")
    assert one.status_code == 201, one.text
    one_id = one.json()["deployment_id"]
    await fake_github.wait_for(deployment_calls(repository), 3)
    # GitHub down for a while: the API does not wait for it, and nothing is lost or reordered.
    fake_github.fail_next = 2
    two = await deploy(forge, platform, second["id"], "dev")
    assert two.status_code == 201, two.text
    two_id = two.json()["deployment_id"]

    calls = await fake_github.wait_for(deployment_calls(repository), 7)
    assert timeline(calls) == [
        ("deployment", one_id, "created"),
        ("deployment_status", one_id, "in_progress"),
        ("deployment_status", one_id, "success"),
        ("deployment", two_id, "created"),
        ("deployment_status", two_id, "in_progress"),
        ("deployment_status", two_id, "success"),
        ("deployment_status", one_id, "inactive"),
    ]
    created = calls[0]
    assert created["ref"] == first["commit_sha"]
    assert created["environment"] == "dev"
    assert created["production_environment"] is False
    assert created["payload"] == {
        "forge_deployment_id": one_id,
        "release_id": first["id"],
        "release_number": first["release_number"],
        "project": "api",
    }
    assert calls[6]["description"] == f"superseded by deployment {two_id}"
    assert calls[2]["log_url"] == f"https://forge.example.com/v1/deployments/dev/{repository}/api/history"
    assert await active(forge, platform, "dev", repository, "api") == two_id


async def test_production_supersede_and_failure_reach_github_in_order(
    platform: Platform, forge: httpx.AsyncClient, fake_github: FakeGitHub, github_forge: GitHubForge
) -> None:
    repository = f"acme{uuid.uuid4().hex[:8]}/shop"
    releases = [await release(forge, platform, repository, "web") for _ in range(3)]
    approvals = [await approve(forge, platform, r["id"]) for r in releases]

    one = await deploy(forge, platform, releases[0]["id"], "production", approvals[0])
    assert one.status_code == 201, one.text
    await fake_github.wait_for(deployment_calls(repository), 3)
    two = await deploy(forge, platform, releases[1]["id"], "production", approvals[1])
    assert two.status_code == 201, two.text
    await fake_github.wait_for(deployment_calls(repository), 7)

    github_forge.freeze_flag.touch()
    try:
        three = await deploy(forge, platform, releases[2]["id"], "production", approvals[2])
    finally:
        github_forge.freeze_flag.unlink()
    assert three.status_code == 502, three.text
    three_id = three.json()["error"]["details"]["deployment_id"]

    one_id, two_id = one.json()["deployment_id"], two.json()["deployment_id"]
    calls = await fake_github.wait_for(deployment_calls(repository), 10)
    assert timeline(calls) == [
        ("deployment", one_id, "created"),
        ("deployment_status", one_id, "in_progress"),
        ("deployment_status", one_id, "success"),
        ("deployment", two_id, "created"),
        ("deployment_status", two_id, "in_progress"),
        ("deployment_status", two_id, "success"),
        ("deployment_status", one_id, "inactive"),
        ("deployment", three_id, "created"),
        ("deployment_status", three_id, "in_progress"),
        ("deployment_status", three_id, "failure"),
    ]
    assert all(c["environment"] == "production" for c in calls)
    assert calls[0]["production_environment"] is True
    assert calls[7]["ref"] == releases[2]["commit_sha"]
    assert "GitOps commit failed" in calls[9]["description"]
    # The failed one changed nothing: the second is still what runs in production.
    assert await active(forge, platform, "production", repository, "web") == two_id
