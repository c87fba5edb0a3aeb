"""Behaviour that needs a deployment instance of its own (its own database, so its pending
count and reconciler see only its rows, and its own GitOps repository): the pending limit, the
Argo CD reconciliation path, adopting a commit whose process died, and the timeout."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from deployment.support import DEVELOPER, Dedicated, clone, create_release, deploy, git, unique_repository
from forge_dev.stack import free_port
from forge_dev.testing import Platform, wait_for_event


async def test_sixty_concurrent_deployments_exactly_fifty_accepted(
    platform: Platform,
    gw: httpx.AsyncClient,
    dedicated_deployment: Callable[[dict[str, str]], Dedicated],
    tmp_path: Path,
) -> None:
    repository = unique_repository()
    release = await create_release(gw, platform, repository, "api")
    # No reconciler: every accepted deployment stays pending, so the 51st onwards must be refused.
    instance = dedicated_deployment({"FORGE_RECONCILER_ENABLED": "false"})
    async with httpx.AsyncClient(base_url=instance.url, timeout=120.0) as direct:
        environments = ("dev", "staging")
        responses = await asyncio.gather(
            *(deploy(direct, platform, release["id"], environments[i % 2]) for i in range(60))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 50, statuses
    assert statuses.count(429) == 10, statuses
    for resp in responses:
        if resp.status_code == 429:
            error = resp.json()["error"]
            assert error["code"] == "limit_exceeded"
            assert error["details"]["limit"] == 50
    accepted = [r.json() for r in responses if r.status_code == 201]
    assert {d["status"] for d in accepted} == {"pending"}

    # Exactly the accepted ones reached the GitOps repository, one commit each.
    checkout = clone(instance.gitops_url, tmp_path / "gitops")
    commits = git("rev-list", "HEAD", cwd=checkout).split()
    assert len(commits) == 50
    assert set(commits) == {d["gitops_commit_sha"] for d in accepted}

    # History shows them pending; nothing is active while nothing reconciles.
    headers = platform.headers("viewer@acme.io", "viewer")
    async with httpx.AsyncClient(base_url=instance.url, timeout=30.0) as direct:
        history = (await direct.get(f"/v1/deployments/dev/{repository}/api/history", headers=headers)).json()
        to_dev = sum(1 for i, r in enumerate(responses) if r.status_code == 201 and environments[i % 2] == "dev")
        assert history["total"] == to_dev
        assert {d["status"] for d in history["deployments"]} == {"pending"}
        current = await direct.get(f"/v1/deployments/dev/{repository}/api", headers=headers)
        assert current.status_code == 404


@dataclass
class FakeArgoCD:
    """A local server speaking the Argo CD application API (GET /api/v1/applications/{name})."""

    token: str
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    polled: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        async with self.polled:
            self.requests.append((name, request.headers.get("Authorization", "")))
            self.polled.notify_all()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "no token", "code": 16}, status=401)
        app = self.apps.get(name)
        if app is None:
            return web.json_response({"error": f'applications.argoproj.io "{name}" not found', "code": 5}, status=404)
        return web.json_response(app)

    def set(self, name: str, revision: str, sync: str, health: str) -> None:
        self.apps[name] = {
            "metadata": {"name": name, "namespace": "argocd"},
            "spec": {"source": {"repoURL": "gitops", "path": "environments", "targetRevision": "main"}},
            "status": {"sync": {"status": sync, "revision": revision}, "health": {"status": health}},
        }

    async def polls_of(self, name: str, count: int, timeout: float = 20.0) -> None:
        """Wait until the reconciler has asked about ``name`` ``count`` more times."""
        async with self.polled:
            target = sum(1 for n, _ in self.requests if n == name) + count
            await asyncio.wait_for(
                self.polled.wait_for(lambda: sum(1 for n, _ in self.requests if n == name) >= target), timeout
            )


@pytest.fixture
async def argocd() -> AsyncIterator[tuple[FakeArgoCD, str]]:
    fake = FakeArgoCD(token=secrets.token_hex(8))
    app = web.Application()
    app.router.add_get("/api/v1/applications/{name}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _status(
    client: httpx.AsyncClient, platform: Platform, environment: str, repository: str, project: str
) -> str:
    headers = platform.headers("viewer@acme.io", "viewer")
    page = (await client.get(f"/v1/deployments/{environment}/{repository}/{project}/history", headers=headers)).json()
    status: str = page["deployments"][0]["status"]
    return status


async def test_argocd_path_activates_when_synced_and_healthy_adopts_orphans_and_times_out(
    platform: Platform,
    gw: httpx.AsyncClient,
    argocd: tuple[FakeArgoCD, str],
    dedicated_deployment: Callable[[dict[str, str]], Dedicated],
    tmp_path: Path,
) -> None:
    fake, url = argocd
    repository = unique_repository()
    r1 = await create_release(gw, platform, repository, "api")
    r2 = await create_release(gw, platform, repository, "api")
    stuck = await create_release(gw, platform, repository, "worker")
    orphan = await create_release(gw, platform, repository, "orphan")
    orphan_path = f"environments/staging/{repository}/orphan/release.yaml"
    instance = dedicated_deployment(
        {
            "FORGE_ARGOCD_URL": url,
            "FORGE_ARGOCD_TOKEN": fake.token,
            "FORGE_ARGOCD_APP_TEMPLATE": "forge-{environment}-{repository}-{project}",
            "FORGE_RECONCILE_INTERVAL": "100ms",
            "FORGE_RECONCILE_TIMEOUT": "8s",
            "FORGE_RECONCILE_ORPHAN_GRACE": "1s",
        }
    )
    owner, name = repository.split("/")
    app = f"forge-staging-{owner}-{name}-api"
    async with httpx.AsyncClient(base_url=instance.url, timeout=60.0) as direct:
        first = (await deploy(direct, platform, r1["id"], "staging")).json()
        # Not known to Argo CD yet, then known but still on an older revision: stays pending.
        await fake.polls_of(app, 2)
        assert await _status(direct, platform, "staging", repository, "api") == "pending"
        fake.set(app, first["gitops_commit_sha"], "Synced", "Progressing")
        await fake.polls_of(app, 2)
        assert await _status(direct, platform, "staging", repository, "api") == "pending"
        fake.set(app, first["gitops_commit_sha"], "Synced", "Healthy")
        completed = await wait_for_event(
            platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == first["id"], timeout=30
        )
        assert completed["data"]["status"] == "active"
        assert completed["data"]["environment"] == "staging"
        assert all(auth == f"Bearer {fake.token}" for _, auth in fake.requests)

        # Release 2: Argo CD syncing it (OutOfSync while it applies) keeps release 1 active.
        second = (await deploy(direct, platform, r2["id"], "staging")).json()
        fake.set(app, second["gitops_commit_sha"], "OutOfSync", "Progressing")
        await fake.polls_of(app, 2)
        headers = platform.headers("viewer@acme.io", "viewer")
        current = (await direct.get(f"/v1/deployments/staging/{repository}/api", headers=headers)).json()
        assert current["deployment_id"] == first["id"]
        fake.set(app, second["gitops_commit_sha"], "Synced", "Healthy")
        await wait_for_event(
            platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == second["id"], timeout=30
        )
        page = (await direct.get(f"/v1/deployments/staging/{repository}/api/history", headers=headers)).json()
        assert [(d["id"], d["status"]) for d in page["deployments"]] == [
            (second["id"], "active"),
            (first["id"], "superseded"),
        ]

        # A process that died between its push and recording the commit: the pointer is in
        # GitOps, the row is pending without a sha. The reconciler adopts the commit it finds.
        orphan_id = str(uuid.uuid4())
        with psycopg.connect(instance.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO deployment.deployments (id, release_id, repository, project, release_number, "
                "release_commit_sha, environment, status, deployed_at, deployed_by, gitops_path) "
                "VALUES (%s, %s, %s, 'orphan', 1, %s, 'staging', 'pending', now() - interval '1.5 seconds', "
                "%s, %s)",
                (orphan_id, orphan["id"], repository, orphan["commit_sha"], DEVELOPER, orphan_path),
            )
        checkout = clone(instance.gitops_url, tmp_path / "operator")
        pointer = checkout / orphan_path
        pointer.parent.mkdir(parents=True)
        pointer.write_text(
            "apiVersion: forge.dev/v1\nkind: ReleasePointer\nmetadata:\n  annotations:\n"
            f'    forge.dev/deployment-id: "{orphan_id}"\n'
            f'spec:\n  release: "{orphan["commit_sha"]}"\n'
        )
        git("add", "-A", cwd=checkout)
        git("-c", "user.name=Forge", "-c", "user.email=forge@acme.io", "commit", "-q", "-m", "orphan", cwd=checkout)
        git("push", "-q", "origin", "HEAD:main", cwd=checkout)
        orphan_sha = git("rev-parse", "HEAD", cwd=checkout).strip()
        fake.set(f"forge-staging-{owner}-{name}-orphan", orphan_sha, "Synced", "Healthy")
        adopted = await wait_for_event(
            platform, "deployment.created", lambda e: e["data"]["deployment_id"] == orphan_id, timeout=30
        )
        assert adopted["data"]["gitops_commit_sha"] == orphan_sha
        assert adopted["data"]["release_id"] == orphan["id"]
        assert (adopted["data"]["repository"], adopted["data"]["project"]) == (repository, "orphan")
        await wait_for_event(
            platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == orphan_id, timeout=30
        )
        current = (await direct.get(f"/v1/deployments/staging/{repository}/orphan", headers=headers)).json()
        assert (current["deployment_id"], current["gitops_commit_sha"]) == (orphan_id, orphan_sha)

        # An application that never becomes Healthy: failed after the timeout, with the reason.
        stuck_app = f"forge-staging-{owner}-{name}-worker"
        never = (await deploy(direct, platform, stuck["id"], "staging")).json()
        fake.set(stuck_app, never["gitops_commit_sha"], "Synced", "Degraded")
        failed = await wait_for_event(
            platform, "deployment.failed", lambda e: e["data"]["deployment_id"] == never["id"], timeout=40
        )
        assert failed["data"]["status"] == "failed"
        assert failed["data"]["environment"] == "staging"
        assert (failed["data"]["repository"], failed["data"]["project"]) == (repository, "worker")
        assert "not reconciled within 8s" in failed["data"]["error_message"]
        assert "Degraded" in failed["data"]["error_message"]
        page = (await direct.get(f"/v1/deployments/staging/{repository}/worker/history", headers=headers)).json()
        assert page["deployments"][0]["status"] == "failed"
        assert "Degraded" in page["deployments"][0]["error"]


async def test_an_unreachable_gitops_repository_fails_the_deployment_and_frees_its_slot(
    platform: Platform,
    gw: httpx.AsyncClient,
    dedicated_deployment: Callable[[dict[str, str]], Dedicated],
) -> None:
    repository = unique_repository()
    release = await create_release(gw, platform, repository, "api")
    instance = dedicated_deployment(
        {
            "FORGE_GITOPS_URL": f"http://forge:s3cret@127.0.0.1:{free_port()}/gitops.git",
            "FORGE_MAX_PENDING_DEPLOYMENTS": "1",
        }
    )
    headers = platform.headers("viewer@acme.io", "viewer")
    async with httpx.AsyncClient(base_url=instance.url, timeout=60.0) as direct:
        # Twice: with a limit of one, a slot kept by the first failure would make the second a 429.
        for _ in range(2):
            resp = await deploy(direct, platform, release["id"], "dev")
            assert resp.status_code == 502, resp.text
            error = resp.json()["error"]
            assert error["code"] == "bad_gateway"
            assert "GitOps" in error["message"]
            assert "s3cret" not in resp.text
        history = (await direct.get(f"/v1/deployments/dev/{repository}/api/history", headers=headers)).json()
        assert [d["status"] for d in history["deployments"]] == ["failed", "failed"]
        assert all(d["error"].startswith("GitOps commit failed") for d in history["deployments"])
        assert all(d["gitops_commit_sha"] is None for d in history["deployments"])
    for d in history["deployments"]:
        failed = await wait_for_event(
            platform, "deployment.failed", lambda e, d=d: e["data"]["deployment_id"] == d["id"], timeout=30
        )
        assert failed["data"]["error_message"] == d["error"]
        assert (failed["data"]["repository"], failed["data"]["project"]) == (repository, "api")
        assert "s3cret" not in failed["data"]["error_message"]
