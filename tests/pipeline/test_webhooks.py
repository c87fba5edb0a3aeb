"""GitHub webhooks (real signed payloads) and commit statuses received by a stand-in GitHub API."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from forge_dev.testing import Platform, read_events, wait_for_event
from forge_pipeline.webhooks import sign

from .conftest import GITHUB_TOKEN, WEBHOOK_SECRET, FakeGitHub, unique_repo
from .test_runs_api import assert_error, body, dev
from .test_status_api import new_run, plan, put_step, put_task


def sha40() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def push_payload(repo: str, ref: str, after: str, **extra: Any) -> dict[str, Any]:
    owner, name = repo.split("/")
    payload = {
        "ref": ref,
        "before": "0" * 40,
        "after": after,
        "created": True,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{repo}/compare/{after[:12]}",
        "commits": [
            {"id": after, "message": "Add feature", "author": {"name": "Octo Cat", "email": "octo@example.com"}}
        ],
        "head_commit": {"id": after, "message": "Add feature", "timestamp": "2026-11-25T19:00:00Z"},
        "repository": {
            "id": 1296269,
            "name": name,
            "full_name": repo,
            "owner": {"login": owner, "id": 1},
            "default_branch": "main",
            "clone_url": f"https://github.com/{repo}.git",
        },
        "pusher": {"name": "octocat", "email": "octo@example.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
    }
    payload.update(extra)
    return payload


def pr_payload(
    repo: str, action: str, head_sha: str, head_ref: str = "feature/login", number: int = 7
) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "state": "open",
            "title": "Login page",
            "head": {"ref": head_ref, "sha": head_sha, "repo": {"full_name": repo}},
            "base": {"ref": "main", "sha": sha40(), "repo": {"full_name": repo}},
            "user": {"login": "hubot"},
        },
        "repository": {"full_name": repo, "name": repo.split("/")[1], "owner": {"login": repo.split("/")[0]}},
        "sender": {"login": "hubot", "id": 2},
    }


async def deliver(
    client: httpx.AsyncClient,
    event: str,
    payload: dict[str, Any],
    delivery: str | None = None,
    secret: str = WEBHOOK_SECRET,
    signature: str | None = None,
) -> httpx.Response:
    raw = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/abc123",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "123456",
        "X-Hub-Signature-256": signature if signature is not None else sign(secret, raw),
    }
    return await client.post("/v1/webhooks/github", content=raw, headers=headers)


async def runs_of(client: httpx.AsyncClient, platform: Platform, repo: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/runs", params={"repository": repo}, headers=dev(platform))
    return list(resp.json()["runs"])


async def test_ping_and_unhandled_events(client: httpx.AsyncClient) -> None:
    resp = await deliver(client, "ping", {"zen": "Keep it logically awesome.", "hook_id": 123456})
    assert resp.status_code == 200
    assert resp.json()["status"] == "pong"
    resp = await deliver(client, "issues", {"action": "opened", "issue": {"number": 1}})
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored"


async def test_branch_push_creates_a_run_once_and_posts_pending_status(
    client: httpx.AsyncClient, platform: Platform, fake_github: FakeGitHub
) -> None:
    repo, after = unique_repo(), sha40()
    delivery = str(uuid.uuid4())
    resp = await deliver(client, "push", push_payload(repo, "refs/heads/main", after), delivery)
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "created"
    run_id = resp.json()["run_id"]
    run = (await client.get(f"/v1/runs/{run_id}", headers=dev(platform))).json()
    assert (run["repository"], run["branch"], run["commit_sha"]) == (repo, "main", after)
    assert (run["trigger_type"], run["triggered_by"], run["status"]) == ("push", "octocat", "pending")

    # GitHub redelivers: same delivery id, nothing new.
    again = await deliver(client, "push", push_payload(repo, "refs/heads/main", after), delivery)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "delivery_id": delivery, "run_id": run_id}
    assert [r["id"] for r in await runs_of(client, platform, repo)] == [run_id]
    await wait_for_event(platform, "pipeline.run.created", lambda e: e["data"]["run_id"] == run_id)
    assert len(await read_events(platform, "pipeline.run.created", lambda e: e["data"]["run_id"] == run_id)) == 1
    # A new delivery for the same commit (another branch) finds the run.
    other = await deliver(client, "push", push_payload(repo, "refs/heads/release", after))
    assert other.status_code == 200
    assert other.json()["status"] == "exists"
    assert other.json()["run_id"] == run_id

    (status,) = await fake_github.wait_for(after, 1)
    owner, name = repo.split("/")
    assert status == {
        "owner": owner,
        "repo": name,
        "sha": after,
        "authorization": f"Bearer {GITHUB_TOKEN}",
        "state": "pending",
        "target_url": f"https://forge.example.com/v1/runs/{run_id}",
        "description": "Forge pipeline run is queued",
        "context": "forge/pipeline",
    }


async def test_tag_pushes_and_deletions(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any]
) -> None:
    repo, after = unique_repo(), sha40()
    created = await deliver(client, "push", push_payload(repo, "refs/heads/main", after))
    run_id = created.json()["run_id"]
    tagged = await deliver(client, "push", push_payload(repo, "refs/tags/v1.2.0", after, base_ref="refs/heads/main"))
    assert tagged.status_code == 200
    assert tagged.json() | {"delivery_id": None} == {
        "status": "tag_recorded",
        "run_id": run_id,
        "tag": "v1.2.0",
        "delivery_id": None,
    }

    fresh = sha40()
    resp = await deliver(client, "push", push_payload(repo, "refs/tags/v2.0.0", fresh, base_ref="refs/heads/main"))
    assert resp.status_code == 201
    assert resp.json()["status"] == "created"
    assert resp.json()["tag"] == "v2.0.0"
    run = (await client.get(f"/v1/runs/{resp.json()['run_id']}", headers=dev(platform))).json()
    assert (run["branch"], run["commit_sha"], run["trigger_type"]) == ("main", fresh, "push")

    cur = await db.execute(
        "SELECT r.id::text AS id, r.tag FROM pipeline.runs r WHERE r.repository = %s ORDER BY r.created_at", (repo,)
    )
    assert [(r["id"], r["tag"]) for r in await cur.fetchall()] == [
        (run_id, "v1.2.0"),
        (resp.json()["run_id"], "v2.0.0"),
    ]
    cur = await db.execute(
        "SELECT tag, commit_sha FROM pipeline.tag_pushes WHERE repository = %s ORDER BY tag", (repo,)
    )
    assert [(r["tag"], r["commit_sha"]) for r in await cur.fetchall()] == [("v1.2.0", after), ("v2.0.0", fresh)]
    await db.rollback()

    deleted = push_payload(repo, "refs/heads/old", "0" * 40, deleted=True, created=False, head_commit=None)
    resp = await deliver(client, "push", deleted)
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored"
    assert len(await runs_of(client, platform, repo)) == 2


async def test_pull_request_events(client: httpx.AsyncClient, platform: Platform) -> None:
    repo = unique_repo()
    shas = [sha40() for _ in range(3)]
    for action, sha in zip(("opened", "synchronize", "reopened"), shas, strict=True):
        resp = await deliver(client, "pull_request", pr_payload(repo, action, sha))
        assert resp.status_code == 201, resp.text
        run = (await client.get(f"/v1/runs/{resp.json()['run_id']}", headers=dev(platform))).json()
        assert (run["trigger_type"], run["branch"], run["commit_sha"], run["triggered_by"]) == (
            "pull_request",
            "feature/login",
            sha,
            "hubot",
        )
    for action in ("closed", "labeled", "edited"):
        resp = await deliver(client, "pull_request", pr_payload(repo, action, sha40()))
        assert resp.status_code == 202
        assert resp.json()["status"] == "ignored"
    assert len(await runs_of(client, platform, repo)) == 3


@pytest.mark.parametrize("kind", ["wrong-secret", "tampered", "missing", "garbage"])
async def test_bad_signature_is_401_and_stores_nothing(
    client: httpx.AsyncClient, platform: Platform, kind: str
) -> None:
    repo, after = unique_repo(), sha40()
    payload = push_payload(repo, "refs/heads/main", after)
    delivery = str(uuid.uuid4())
    raw = json.dumps(payload).encode()
    signature = {
        "wrong-secret": sign("not-the-secret", raw),
        "tampered": sign(WEBHOOK_SECRET, raw + b" "),
        "missing": "",
        "garbage": "sha1=deadbeef",
    }[kind]
    resp = await deliver(client, "push", payload, delivery, signature=signature)
    assert_error(resp, 401, "authentication_failed")
    assert await runs_of(client, platform, repo) == []
    # The delivery id was not recorded: the correctly signed delivery is processed.
    ok = await deliver(client, "push", payload, delivery)
    assert ok.status_code == 201
    assert ok.json()["status"] == "created"


async def test_malformed_webhooks_are_400(client: httpx.AsyncClient) -> None:
    raw = b"{not json"
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
    }
    assert_error(await client.post("/v1/webhooks/github", content=raw, headers=headers), 400, "invalid_request")
    no_event = {**headers, "X-GitHub-Event": ""}
    assert_error(await client.post("/v1/webhooks/github", content=raw, headers=no_event), 400, "invalid_request")
    bad_repo = push_payload("x/y", "refs/heads/main", sha40())
    bad_repo["repository"]["full_name"] = "no-slash"
    assert_error(await deliver(client, "push", bad_repo), 400, "invalid_request")
    # Nested past the interpreter's recursion limit (msgspec's RecursionError): still a 400.
    deep = b'{"unknown":' * 10_000 + b"1" + b"}" * 10_000
    for event in ("push", "issues"):  # read as a push, and only checked to be an object
        signed = {**headers, "X-GitHub-Event": event, "X-Hub-Signature-256": sign(WEBHOOK_SECRET, deep)}
        assert_error(await client.post("/v1/webhooks/github", content=deep, headers=signed), 400, "invalid_request")


async def test_commit_statuses_follow_the_run(
    client: httpx.AsyncClient, platform: Platform, db: psycopg.AsyncConnection[Any], fake_github: FakeGitHub
) -> None:
    # success: pending, then success
    run, phases = await new_run(client, platform, db, plan({"test": (1, {"api": ["unit"]})}))
    task = phases[0].tasks[0]
    await put_task(client, platform, task.id, status="running")
    await put_step(client, platform, task.steps[0].id, status="running")
    await put_step(client, platform, task.steps[0].id, status="success", exit_code=0)
    await put_task(client, platform, task.id, status="success")
    statuses = await fake_github.wait_for(run["commit_sha"], 2)
    assert [s["state"] for s in statuses] == ["pending", "success"]
    assert statuses[1]["target_url"] == f"https://forge.example.com/v1/runs/{run['id']}"

    # failure, delivered through two GitHub outages (retried with backoff, in order)
    fake_github.fail_next = 2
    before = fake_github.failures_served
    run, phases = await new_run(client, platform, db, plan({"test": (1, {"api": ["unit"]})}))
    task = phases[0].tasks[0]
    await put_task(client, platform, task.id, status="running")
    await put_task(client, platform, task.id, status="failed", error="boom")
    statuses = await fake_github.wait_for(run["commit_sha"], 2, timeout=30)
    assert [s["state"] for s in statuses] == ["pending", "failure"]
    assert fake_github.failures_served - before == 2

    # cancelled: error
    created = (await client.post("/v1/runs", json=body(), headers=dev(platform))).json()
    sha = (await client.get(f"/v1/runs/{created['id']}", headers=dev(platform))).json()["commit_sha"]
    await client.delete(f"/v1/runs/{created['id']}", headers=dev(platform))
    statuses = await fake_github.wait_for(sha, 2)
    assert [(s["state"], s["description"]) for s in statuses] == [
        ("pending", "Forge pipeline run is queued"),
        ("error", "Forge pipeline run was cancelled"),
    ]


async def test_tag_pushed_after_a_successful_run_reopens_release_evaluation(
    client: httpx.AsyncClient, db: psycopg.AsyncConnection[Any]
) -> None:
    from forge_pipeline import service

    repo, after = unique_repo(), sha40()
    run_id = (await deliver(client, "push", push_payload(repo, "refs/heads/main", after))).json()["run_id"]
    async with db.transaction():
        await service.store_discovery(db, run_id, [])
        assert await service.complete_run(db, run_id)
        # As the dispatcher records once it evaluated the branch's release triggers.
        await db.execute("UPDATE pipeline.runs SET release_evaluated_at = now() WHERE id = %s", (run_id,))
    resp = await deliver(client, "push", push_payload(repo, "refs/tags/v3.0.0", after, base_ref="refs/heads/main"))
    assert resp.json()["status"] == "tag_recorded"
    cur = await db.execute(
        "SELECT tag, release_evaluated_at, status::text AS status FROM pipeline.runs WHERE id = %s", (run_id,)
    )
    row = await cur.fetchone()
    await db.rollback()
    assert row == {"tag": "v3.0.0", "release_evaluated_at": None, "status": "success"}


async def test_runs_record_who_triggered_them_by_stable_identity(
    client: httpx.AsyncClient, platform: Platform, db: Any
) -> None:
    """Webhook runs keep the GitHub user id next to the login (logins are renamed and reused);
    API runs keep the token subject. The release job hands these on for separation of duties."""
    repo = unique_repo()
    hook = await deliver(client, "push", push_payload(repo, "refs/heads/main", sha40()))
    assert hook.status_code == 201, hook.text
    api = await client.post(
        "/v1/runs",
        json={"repository": repo, "branch": "main", "commit_sha": sha40(), "trigger_type": "manual"},
        headers=platform.headers("alice@example.com", "developer"),
    )
    assert api.status_code == 201, api.text
    async with db.transaction():
        cur = await db.execute(
            "SELECT id::text AS id, triggered_by, triggered_by_id FROM pipeline.runs WHERE id = ANY(%s::uuid[])",
            ([hook.json()["run_id"], api.json()["id"]],),
        )
        rows = {r["id"]: (r["triggered_by"], r["triggered_by_id"]) for r in await cur.fetchall()}
    assert rows[hook.json()["run_id"]] == ("octocat", "github:583231")
    assert rows[api.json()["id"]] == ("alice@example.com", "sub:alice@example.com")
