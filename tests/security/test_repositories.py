"""FORGE_REPOSITORIES (issue 12, item 5): a platform builds and releases only the repositories it
lists; runs, webhooks and releases for any other get a 400 ``invalid_request`` envelope with
``details.field = "repository"`` and change nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from forge_pipeline.webhooks import sign
from tests.security.conftest import WEBHOOK_SECRET, Cell


def _assert_repository_refused(resp: httpx.Response, repository: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]["field"] == "repository"
    assert repository in error["message"]
    assert "FORGE_REPOSITORIES" in error["message"]


async def _runs_of(cell: Cell, client: httpx.AsyncClient, repository: str) -> list[dict[str, Any]]:
    resp = await client.get(f"{cell.url}/v1/runs", params={"repository": repository}, headers=cell.headers("viewer"))
    assert resp.status_code == 200, resp.text
    return list(resp.json()["runs"])


async def test_runs_for_unlisted_repositories_are_refused(security_cell: Cell, client: httpx.AsyncClient) -> None:
    cell = security_cell
    other = f"elsewhere-{uuid.uuid4().hex[:6]}/app"
    body = {"repository": other, "branch": "main", "commit_sha": "a" * 40, "trigger_type": "push"}
    resp = await client.post(f"{cell.url}/v1/runs", json=body, headers=cell.headers())
    _assert_repository_refused(resp, other)
    # Glob over owner/name, compared case-insensitively as GitHub does.
    listed = f"EXEC-{cell.tag.upper()}/App"
    ok = await client.post(f"{cell.url}/v1/runs", json={**body, "repository": listed}, headers=cell.headers())
    assert ok.status_code == 201, ok.text
    assert await _runs_of(cell, client, other) == []


async def test_webhooks_for_unlisted_repositories_are_refused(security_cell: Cell, client: httpx.AsyncClient) -> None:
    cell = security_cell
    other = f"elsewhere-{uuid.uuid4().hex[:6]}/app"
    payload = {
        "ref": "refs/heads/main",
        "after": "b" * 40,
        "repository": {"full_name": other, "name": "app", "owner": {"login": other.split("/")[0]}},
        "pusher": {"name": "octocat"},
        "sender": {"login": "octocat"},
    }
    raw = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
    }
    resp = await client.post(f"{cell.url}/v1/webhooks/github", content=raw, headers=headers)
    _assert_repository_refused(resp, other)
    assert await _runs_of(cell, client, other) == []


async def test_releases_for_unlisted_repositories_are_refused(security_cell: Cell, client: httpx.AsyncClient) -> None:
    platform = security_cell.platform
    release = platform.start_process(
        "release", env={"FORGE_REPOSITORIES": "acme/*, tools/build", "FORGE_VERIFY_PIPELINE_RUNS": "false"}
    )
    try:
        headers = platform.headers("forge-worker", service_account=True)
        body = {"project": "api", "commit_sha": "c" * 40, "artifacts": []}
        refused = await client.post(
            f"{release.url}/v1/releases", json={**body, "repository": "other/app"}, headers=headers
        )
        _assert_repository_refused(refused, "other/app")
        # Nothing was stored: the project has no release.
        listed = await client.get(f"{release.url}/v1/releases/other/app/api", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == 0
        created = await client.post(
            f"{release.url}/v1/releases", json={**body, "repository": "acme/app"}, headers=headers
        )
        assert created.status_code == 201, created.text
    finally:
        release.stop()
