"""Fault: a GitOps remote that accepts connections and never answers.

A deployment instance whose ``FORGE_GITOPS_URL`` is such a remote (a local TCP server speaking
nothing, as git over HTTP sees a stalled server), behind a gateway of its own, shares the
platform's database, so its pending
deployments count against the same limit as everyone's. Its deployments must fail with a clear
504 naming the remote (credentials redacted) and the operation, within its git timeouts, while
deployments of other projects through the platform (its local GitOps repository) keep landing.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform, wait_for_event

from .proxy import StalledRemote

DEVELOPER = "stall-dev@acme.io"


@pytest.fixture
async def stalled_remote() -> AsyncIterator[StalledRemote]:
    remote = StalledRemote()
    await remote.start()
    try:
        yield remote
    finally:
        await remote.stop()


async def _release(client: httpx.AsyncClient, platform: Platform, repository: str, project: str) -> dict[str, Any]:
    resp = await client.post(
        "/v1/releases",
        json={"repository": repository, "project": project, "commit_sha": secrets.token_hex(20), "artifacts": []},
        headers=platform.headers(DEVELOPER, "developer"),
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_a_stalled_gitops_remote_fails_its_deployments_and_others_keep_landing(
    platform: Platform, stalled_remote: StalledRemote
) -> None:
    url = f"http://forge:s3cret-token@127.0.0.1:{stalled_remote.port}/gitops.git"
    redacted = f"http://***@127.0.0.1:{stalled_remote.port}/gitops.git"
    instance = platform.start_process(
        "deployment",
        env={
            "FORGE_GITOPS_URL": url,
            "FORGE_GITOPS_TIMEOUT": "2s",
            "FORGE_GITOPS_COMMIT_TIMEOUT": "4s",
            "FORGE_RECONCILER_ENABLED": "false",
            "FORGE_DB_POOL_MIN": "1",
            "FORGE_DB_POOL_MAX": "4",
        },
    )
    # Clients reach that instance through a gateway of its own, as they would in production.
    gateway = platform.start_process("gateway", env={"FORGE_DEPLOYMENT_URL": instance.url})
    repository = f"stall{uuid.uuid4().hex[:10]}/shop"
    headers = platform.headers(DEVELOPER, "developer")
    try:
        async with (
            httpx.AsyncClient(base_url=platform.gateway_url, timeout=60.0) as gw,
            httpx.AsyncClient(base_url=gateway.url, timeout=60.0) as stalled,
        ):
            blocked = [await _release(gw, platform, repository, f"blocked{i}") for i in range(3)]
            others = [await _release(gw, platform, repository, f"other{i}") for i in range(3)]

            stuck = [
                asyncio.create_task(
                    stalled.post("/v1/deployments", json={"release_id": r["id"], "environment": "dev"}, headers=headers)
                )
                for r in blocked
            ]
            await asyncio.wait_for(stalled_remote.connected.wait(), 30)

            # The remote is stalled with requests queued behind it: other projects still land.
            for release in others:
                resp = await gw.post(
                    "/v1/deployments", json={"release_id": release["id"], "environment": "dev"}, headers=headers
                )
                assert resp.status_code == 201, resp.text
                deployment_id = resp.json()["id"]
                await wait_for_event(
                    platform, "deployment.completed", lambda e, d=deployment_id: e["data"]["deployment_id"] == d
                )

            answers = await asyncio.gather(*stuck)
            for resp in answers:
                assert resp.status_code == 504, resp.text
                error = resp.json()["error"]
                assert error["code"] == "gateway_timeout"
                assert error["details"]["remote"] == redacted
                assert error["details"]["operation"] in ("fetching from", "waiting for the lock before pushing to")
                assert redacted in error["message"]
                assert "s3cret" not in resp.text

            # Each stalled deployment is recorded as failed, with the reason, and holds no slot.
            viewer = platform.headers("stall-viewer@acme.io", "viewer")
            for i, resp in enumerate(answers):
                page = await gw.get(f"/v1/deployments/dev/{repository}/blocked{i}/history", headers=viewer)
                assert page.status_code == 200, page.text
                [entry] = page.json()["deployments"]
                assert entry["id"] == resp.json()["error"]["details"]["deployment_id"]
                assert entry["status"] == "failed"
                assert redacted in entry["error"]
                assert "s3cret" not in entry["error"]
                # ... and announced, as every failed deployment is, with the recorded error.
                failed = await wait_for_event(
                    platform, "deployment.failed", lambda e, d=entry["id"]: e["data"]["deployment_id"] == d
                )
                assert failed["data"] == {
                    "deployment_id": entry["id"],
                    "environment": "dev",
                    "status": "failed",
                    "error_message": entry["error"],
                    "repository": repository,
                    "project": f"blocked{i}",
                }
    finally:
        gateway.stop()
        instance.stop()
