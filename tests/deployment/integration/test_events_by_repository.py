"""Deployment and approval events reach a subscriber that follows one repository's events
(``GET /v1/events?repository=``, filtered on ``data.repository``), through the gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from deployment.support import APPROVER, create_release, deploy, unique_repository
from forge_dev.testing import Platform

WANTED = ("approval.created", "deployment.created", "deployment.completed", "approval.revoked")


async def _events(lines: Any, until: set[str]) -> list[dict[str, Any]]:
    """The envelopes of the stream's events (``data:`` lines) until every type of ``until`` came."""
    found: list[dict[str, Any]] = []
    async for line in lines:
        if line.startswith("data:"):
            found.append(json.loads(line[len("data:") :]))
            if until <= {e["event_type"] for e in found}:
                return found
    raise AssertionError(f"the stream ended after {[e['event_type'] for e in found]}")


async def test_deployment_and_approval_events_reach_a_repository_filtered_subscriber(
    platform: Platform, gw: httpx.AsyncClient
) -> None:
    repository, other = unique_repository(), unique_repository()
    viewer = platform.headers("watcher@acme.io", "viewer")
    async with gw.stream("GET", f"/v1/events?repository={repository}&timeout=120", headers=viewer) as feed:
        assert feed.status_code == 200
        lines = feed.aiter_lines()
        assert await anext(lines) == ": subscribed"

        # Another repository's deployment first: the subscriber never sees it.
        elsewhere = await create_release(gw, platform, other, "api")
        assert (await deploy(gw, platform, elsewhere["id"], "dev")).status_code == 201

        release = await create_release(gw, platform, repository, "api")
        approved = await gw.post(
            "/v1/approvals",
            json={"release_id": release["id"], "environment": "production", "justification": "CAB-7"},
            headers=platform.headers(APPROVER, "approver"),
        )
        assert approved.status_code == 201, approved.text
        approval_id = approved.json()["approval_id"]
        deployed = await deploy(gw, platform, release["id"], "production", approval_id)
        assert deployed.status_code == 201, deployed.text
        deployment_id = deployed.json()["deployment_id"]
        revoked = await gw.delete(f"/v1/approvals/{approval_id}", headers=platform.headers(APPROVER, "approver"))
        assert revoked.status_code == 200, revoked.text

        # deployment.completed comes when the reconciler sees the commit applied.
        async with asyncio.timeout(60):
            events = await _events(lines, set(WANTED))

    assert {(e["data"]["repository"], e["data"]["project"]) for e in events} == {(repository, "api")}
    by_type = {e["event_type"]: e["data"] for e in events}
    assert by_type["release.created"]["release_id"] == release["id"]
    assert by_type["approval.created"]["approval_id"] == approval_id
    assert by_type["approval.created"]["release_id"] == release["id"]
    assert by_type["deployment.created"]["deployment_id"] == deployment_id
    assert by_type["deployment.created"]["release_id"] == release["id"]
    assert by_type["deployment.completed"]["deployment_id"] == deployment_id
    assert by_type["approval.revoked"]["approval_id"] == approval_id
    # The spec's fields are all still there.
    assert set(by_type["deployment.created"]) >= {
        "deployment_id",
        "release_id",
        "environment",
        "deployed_by",
        "gitops_commit_sha",
    }
    assert set(by_type["deployment.completed"]) >= {
        "deployment_id",
        "environment",
        "status",
        "reconciliation_duration_seconds",
    }
