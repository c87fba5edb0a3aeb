"""A release job's 409 counts as done only when the existing release is the same repository,
project and commit; any other 409 is a release that was not made, shown on the run.

Tag ``v1`` is pushed for commit A (its run releases A with the tag as alias), then moved to
commit B (force-push). B's run succeeds, but tags never move between releases: the release
service answers 409, and the run says so in ``release_error`` instead of counting B as
released. Everything goes through a gateway, as GitHub and a client would: the signed push
webhooks, the runs and the releases.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform

from .conftest import TERMINAL, Cell

pytestmark = pytest.mark.slow

SECRET = "release-conflict-webhook-secret"
REPO_TOML = "[phases.build]\ngroup = 1\n"
PROJECT = 'name = "api"\n[[phases.build.steps]]\nname = "make"\nrun = "echo built"\n[release]\non = [{ tag = true }]\n'


@pytest.fixture
def tag_cell(platform: Platform) -> Iterator[Cell]:
    cell = Cell(platform, "relconf", env={"FORGE_GITHUB_WEBHOOK_SECRET": SECRET})
    try:
        cell.start_pipeline()
        cell.start_gateway()
        cell.start_worker()
        cell.wait_workers(1)
        yield cell
    finally:
        cell.close()


@pytest.fixture
async def client(tag_cell: Cell) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tag_cell.url, timeout=30.0) as c:
        yield c


async def _push_tag(client: httpx.AsyncClient, repository: str, tag: str, sha: str, before: str) -> dict[str, Any]:
    owner, name = repository.split("/")
    payload = {
        "ref": f"refs/tags/{tag}",
        "before": before,
        "after": sha,
        "created": before == "0" * 40,
        "deleted": False,
        "forced": before != "0" * 40,
        "base_ref": "refs/heads/main",
        "head_commit": {"id": sha, "message": "release", "timestamp": "2026-12-01T12:00:00Z"},
        "commits": [],
        "repository": {"name": name, "full_name": repository, "owner": {"login": owner}, "default_branch": "main"},
        "pusher": {"name": "octocat", "email": "octo@example.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
    }
    raw = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest(),
    }
    resp = await client.post("/v1/webhooks/github", content=raw, headers=headers)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _until(client: httpx.AsyncClient, cell: Cell, path: str, done: Any, timeout: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await client.get(path, headers=cell.headers("viewer"))
        if done(resp):
            return resp
        assert loop.time() < deadline, f"{path}: {resp.status_code} {resp.text[:500]}"
        await asyncio.sleep(0.1)


async def test_a_tag_moved_to_another_commit_is_a_release_error_not_a_release(
    tag_cell: Cell, client: httpx.AsyncClient
) -> None:
    cell = tag_cell
    repo = cell.repo("tags")
    first = repo.commit({".forge/repo.toml": REPO_TOML, "api/.forge/project.toml": PROJECT})
    second = repo.commit({"api/CHANGES": "second\n"})

    run_a = (await _push_tag(client, repo.repository, "v1", first, "0" * 40))["run_id"]
    release_a = await _until(
        client, cell, f"/v1/releases/{repo.repository}/api/{first}", lambda r: r.status_code == 200
    )
    assert release_a.json()["pipeline_run_id"] == run_a

    run_b = (await _push_tag(client, repo.repository, "v1", second, first))["run_id"]
    run = (
        await _until(
            client,
            cell,
            f"/v1/runs/{run_b}",
            lambda r: r.status_code == 200 and r.json()["status"] in TERMINAL and r.json()["release_error"],
        )
    ).json()
    assert run["status"] == "success", run
    assert "api: POST /v1/releases answered 409" in run["release_error"]
    assert "v1" in run["release_error"]
    missing = await client.get(f"/v1/releases/{repo.repository}/api/{second}", headers=cell.headers("viewer"))
    assert missing.status_code == 404, missing.text
    # The first release still holds the tag.
    held = await client.get(f"/v1/releases/{repo.repository}/api/v1", headers=cell.headers("viewer"))
    assert held.status_code == 200, held.text
    assert held.json()["commit_sha"] == first
