"""The whole lifecycle, only through a gateway, as a client would drive it:

push (a commit in a real git repository, announced by a signed GitHub push webhook) -> the run
succeeds -> the worker's release job creates the release -> deploy to dev -> an approver (not
the release's creator) approves -> deploy to production -> current deployments and history.

The run executes on a pipeline instance + worker of this test (own database and NATS prefix)
that fetch from a local repository (``FORGE_GIT_URL_TEMPLATE=file://...``); the gateway in
front of it routes releases, approvals and deployments to the platform's shared services.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from forge_dev.stack import Process
from forge_dev.testing import Platform, wait_for_event

DEVELOPER = "dana.dev@acme.io"
APPROVER = "alex.approver@acme.io"
VIEWER = "vic.viewer@acme.io"
WEBHOOK_SECRET = "e2e-webhook-secret"

REPO_TOML = """
forge_version = "1"
[phases.test]
group = 1
[phases.build]
group = 2
"""

PROJECT_TOML = """
name = "api"
[[phases.test.steps]]
name = "unit"
action = "shell"
run = "test -f app.txt && echo tests ok"
[[phases.build.steps]]
name = "package"
action = "shell"
run = "echo built api at $FORGE_COMMIT_SHA"
[release]
on = [{ branch = "main" }]
"""


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Dana Dev",
        "GIT_AUTHOR_EMAIL": DEVELOPER,
        "GIT_COMMITTER_NAME": "Dana Dev",
        "GIT_COMMITTER_EMAIL": DEVELOPER,
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _push(root: Path, repository: str, files: dict[str, str]) -> str:
    """A bare repository ``{root}/{repository}.git`` with one commit on main pushed into it."""
    bare = root / f"{repository}.git"
    work = root / "work" / repository
    bare.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    _git("init", "-q", "-b", "main", cwd=work)
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "api: first version", cwd=work)
    _git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    return _git("rev-parse", "HEAD", cwd=work).strip()


class Lane:
    """Pipeline instance + worker fetching from local repositories, behind a gateway of its own."""

    def __init__(self, platform: Platform, root: Path) -> None:
        self.platform = platform
        self.tag = uuid.uuid4().hex[:8]
        self.repos = root / "repos"
        self.database = f"forge_e2e_{self.tag}"
        self.admin = platform.stack.infra.admin_database_url
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        from forge_dev.stack import _with_database

        self.env = {
            "FORGE_DATABASE_URL": _with_database(self.admin, self.database),
            "FORGE_NATS_PREFIX": f"{platform.nats_prefix}e{self.tag}",
            "FORGE_GIT_URL_TEMPLATE": self.repos.as_uri() + "/{repository}.git",
            "FORGE_GIT_CACHE_DIR": str(root / "git-cache"),
            "FORGE_DB_POOL_MIN": "1",
            "FORGE_GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        self.processes: list[Process] = []

    def start(self) -> str:
        pipeline = self.platform.start_process("pipeline", env=self.env)
        self.processes.append(pipeline)
        # A release service on the platform's database that verifies pipeline_run_id against this
        # lane's pipeline, where the runs are.
        release = self.platform.start_process("release", env={"FORGE_PIPELINE_URL": pipeline.url})
        self.processes.append(release)
        self.processes.append(
            self.platform.start_process(
                "worker", env={**self.env, "FORGE_PIPELINE_URL": pipeline.url, "FORGE_RELEASE_URL": release.url}
            )
        )
        gateway = self.platform.start_process("gateway", env={"FORGE_PIPELINE_URL": pipeline.url})
        self.processes.append(gateway)
        return gateway.url

    def log_tails(self, chars: int = 6000) -> str:
        """The end of each process's log, to say why a step of the lifecycle did not happen."""
        parts = []
        for proc in self.processes:
            if proc.log_path and proc.log_path.exists():
                parts.append(f"----- {proc.name} -----\n{proc.log_path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        with contextlib.suppress(Exception), psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@pytest.fixture
def lane(platform: Platform, tmp_path: Path) -> Iterator[Lane]:
    lane = Lane(platform, tmp_path)
    try:
        yield lane
    finally:
        lane.close()


async def _deliver_push(
    client: httpx.AsyncClient,
    repository: str,
    sha: str,
    ref: str = "refs/heads/main",
    base_ref: str | None = None,
    delivery_id: str | None = None,
) -> httpx.Response:
    """GitHub's signed ``push`` delivery of ``sha`` to ``ref`` (a tag push carries ``base_ref``);
    ``delivery_id`` repeats an earlier delivery, as GitHub's "Redeliver" does."""
    owner, name = repository.split("/")
    payload: dict[str, Any] = {
        "ref": ref,
        "base_ref": base_ref,
        "before": "0" * 40,
        "after": sha,
        "created": True,
        "deleted": False,
        "forced": False,
        "head_commit": {"id": sha, "message": "api: first version", "timestamp": "2026-11-25T19:00:00Z"},
        "commits": [{"id": sha, "message": "api: first version", "author": {"name": "Dana Dev", "email": DEVELOPER}}],
        "repository": {"name": name, "full_name": repository, "owner": {"login": owner}, "default_branch": "main"},
        "pusher": {"name": "dana", "email": DEVELOPER},
        "sender": {"login": "dana", "type": "User"},
    }
    raw = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
    }
    return await client.post("/v1/webhooks/github", content=raw, headers=headers)


async def _poll(client: httpx.AsyncClient, path: str, headers: dict[str, str], until: Any, timeout: float) -> Any:
    """GET ``path`` until ``until(body)`` holds (there is no event for this client to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await client.get(path, headers=headers)
        body = resp.json() if resp.status_code == 200 else None
        if body is not None and until(body):
            return body
        assert loop.time() < deadline, f"{path} did not get there in {timeout}s: {resp.status_code} {resp.text}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_push_run_release_deploy_approve_promote(platform: Platform, lane: Lane, tmp_path: Path) -> None:
    repository = f"acme{lane.tag}/storefront"
    sha = _push(
        lane.repos,
        repository,
        {
            ".forge/repo.toml": REPO_TOML,
            "services/api/.forge/project.toml": PROJECT_TOML,
            "services/api/app.txt": "hello\n",
        },
    )
    gateway = lane.start()
    developer = platform.headers(DEVELOPER, "developer")
    approver = platform.headers(APPROVER, "approver")
    viewer = platform.headers(VIEWER, "viewer")

    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        # push -> run: GitHub delivers the signed push event
        resp = await _deliver_push(client, repository, sha)
        assert resp.status_code == 201, resp.text
        assert resp.json()["status"] == "created"
        run_id = resp.json()["run_id"]
        run = await _poll(client, f"/v1/runs/{run_id}", viewer, lambda r: r["status"] in ("success", "failed"), 180)
        assert run["status"] == "success", f"{run}\n{lane.log_tails()}"
        assert [(p["name"], p["status"]) for p in run["phases"]] == [("test", "success"), ("build", "success")]

        # run -> release, created by the worker's release job
        try:
            created = await wait_for_event(
                platform, "release.created", lambda e: e["data"]["repository"] == repository, timeout=120
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{lane.log_tails()}") from None
        assert created["data"]["project"] == "api"
        assert created["data"]["commit_sha"] == sha
        assert created["data"]["trigger_type"] == "branch_push"
        listing = await client.get(f"/v1/releases/{repository}/api", headers=viewer)
        assert listing.status_code == 200, listing.text
        assert listing.json()["total"] == 1
        release = (await client.get(f"/v1/releases/{repository}/api/{sha[:12]}", headers=viewer)).json()
        assert release["id"] == created["data"]["release_id"]
        assert release["release_number"] == 1
        assert release["trigger"]["trigger_type"] == "branch_push"
        assert release["created_by"] != APPROVER

        # release -> dev
        resp = await client.post(
            "/v1/deployments", json={"release_id": release["id"], "environment": "dev"}, headers=developer
        )
        assert resp.status_code == 201, resp.text
        to_dev = resp.json()
        await wait_for_event(
            platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == to_dev["id"], timeout=30
        )
        current = (await client.get(f"/v1/deployments/dev/{repository}/api", headers=viewer)).json()
        assert (current["deployment_id"], current["release_number"], current["status"]) == (to_dev["id"], 1, "active")

        # production is gated: no approval, then an approval by someone who did not create the release
        gated = await client.post(
            "/v1/deployments", json={"release_id": release["id"], "environment": "production"}, headers=developer
        )
        assert gated.status_code == 400, gated.text
        resp = await client.post(
            "/v1/approvals",
            json={"release_id": release["id"], "environment": "production", "justification": "dev looks good"},
            headers=approver,
        )
        assert resp.status_code == 201, resp.text
        approval = resp.json()
        assert approval["approver"] == APPROVER
        assert approval["status"] == "active"
        status = (await client.get(f"/v1/approvals/{release['id']}/production", headers=viewer)).json()
        assert status["approval_id"] == approval["approval_id"]

        # release -> production
        resp = await client.post(
            "/v1/deployments",
            json={"release_id": release["id"], "environment": "production", "approval_id": approval["approval_id"]},
            headers=developer,
        )
        assert resp.status_code == 201, resp.text
        to_prod = resp.json()
        completed = await wait_for_event(
            platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == to_prod["id"], timeout=30
        )
        assert completed["data"]["environment"] == "production"

        owner, name = repository.split("/")
        current = (await client.get(f"/v1/deployments/production/{owner}%2F{name}/api", headers=viewer)).json()
        assert current["deployment_id"] == to_prod["id"]
        assert current["release_id"] == release["id"]
        assert current["approval_id"] == approval["approval_id"]
        assert current["deployed_by"] == DEVELOPER
        for environment, deployment in (("dev", to_dev), ("production", to_prod)):
            history = (
                await client.get(f"/v1/deployments/{environment}/{repository}/api/history", headers=viewer)
            ).json()
            assert history["total"] == 1
            assert [(d["id"], d["release_number"], d["status"]) for d in history["deployments"]] == [
                (deployment["id"], 1, "active")
            ]

    # What Argo CD would apply: both pointers name the released commit.
    checkout = tmp_path / "gitops"
    subprocess.run(["git", "clone", "-q", platform.env()["FORGE_GITOPS_URL"], str(checkout)], check=True)
    for environment in ("dev", "production"):
        pointer = yaml.safe_load((checkout / f"environments/{environment}/{repository}/api/release.yaml").read_text())
        assert pointer["spec"]["release"] == sha
        assert pointer["spec"]["releaseNumber"] == 1
        assert pointer["spec"]["ociUri"] == release["oci_uri"]
