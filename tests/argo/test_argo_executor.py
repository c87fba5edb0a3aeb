"""``FORGE_EXECUTOR=argo``: CI and release jobs run as Argo workflows, through the gateway.

Every job becomes one workflow on the fake Argo server, whose pod (a subprocess running
``forge-worker run-job``) reports its steps and uploads their logs as a worker does, and whose
output parameter carries the reply the dispatcher acts on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from forge_pipeline.dispatch.argo import LABEL_RUN, LABEL_TYPE
from tests.execution.conftest import TERMINAL, GitRepo, steps_of

from .conftest import ArgoCell

pytestmark = pytest.mark.slow

REPO_TOML = """
forge_version = "1"
[phases.lint]
group = 1
[phases.test]
group = 2
{extra}
"""


def project(steps: str, release: str = "") -> str:
    return f'name = "api"\n{steps}\n{release}'


@pytest.fixture
async def client(argo_cell: ArgoCell) -> Any:
    headers = argo_cell.cell.headers()
    async with httpx.AsyncClient(base_url=argo_cell.url, headers=headers, timeout=30.0) as c:
        yield c


async def _create(client: httpx.AsyncClient, repo: GitRepo, sha: str) -> str:
    resp = await client.post(
        "/v1/runs", json={"repository": repo.repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"}
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def _wait(client: httpx.AsyncClient, run_id: str, until: Any = None, timeout: float = 90.0) -> dict[str, Any]:
    check = until or (lambda r: r["status"] in TERMINAL)
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(f"/v1/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        run: dict[str, Any] = resp.json()
        if check(run):
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not get there in {timeout}s: {run}"
        await asyncio.sleep(0.1)


def _workflows(argo_cell: ArgoCell, run_id: str, job_type: str | None = None) -> list[dict[str, Any]]:
    found = argo_cell.argo.by_label(LABEL_RUN, run_id)
    return [w for w in found if job_type is None or w["metadata"]["labels"][LABEL_TYPE] == job_type]


async def test_a_run_executes_as_argo_workflows_builds_and_releases(
    argo_cell: ArgoCell, client: httpx.AsyncClient
) -> None:
    repo = argo_cell.cell.repo("shop")
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML.format(extra=""),
            "api/.forge/project.toml": project(
                '[[phases.lint.steps]]\nname = "style"\nrun = "echo lint ok"\n'
                '[[phases.test.steps]]\nname = "unit"\nrun = "echo unit at $FORGE_COMMIT_SHA; echo warn >&2"\n'
                '[[artifacts]]\nname = "cli"\ntype = "binary"\n'
                'build = "mkdir -p dist && echo cli $FORGE_COMMIT_SHA > dist/cli"\npath = "dist/cli"\n',
                '[release]\non = [{ branch = "main" }]\n',
            ),
        }
    )
    run_id = await _create(client, repo, sha)
    run = await _wait(client, run_id)
    assert run["status"] == "success", run
    assert [(p["name"], p["status"]) for p in run["phases"]] == [
        ("lint", "success"),
        ("test", "success"),
        ("artifacts", "success"),
    ]
    steps = steps_of(run)
    assert {k: s["status"] for k, s in steps.items() if k[0] != "artifacts"} == {
        ("lint", "api", "style"): "success",
        ("test", "api", "unit"): "success",
    }
    # The artifact was built by its own workflow's pod (deadline: its timeout plus the grace
    # that lets the worker's own account of a timeout arrive first).
    (artifact,) = run["artifacts"]
    assert (artifact["name"], artifact["status"]) == ("cli", "success")
    assert artifact["digest"].startswith("sha256:")
    (built,) = _workflows(argo_cell, run_id, "artifact")
    assert built["spec"]["activeDeadlineSeconds"] == 1200 + 15
    # The pods uploaded the steps' logs as a worker does; the API serves them.
    for key, expected in {
        ("lint", "api", "style"): "lint ok\n",
        ("test", "api", "unit"): f"unit at {sha}\nwarn\n",
    }.items():
        resp = await client.get(f"/v1/steps/{steps[key]['id']}/logs")
        assert resp.status_code == 200, resp.text
        assert resp.text == expected
    # One workflow per CI job, each Succeeded with the reply as its output parameter.
    # (The run may complete from the pod's last report a moment before its pod exits.)
    ci = _workflows(argo_cell, run_id, "ci")
    assert len(ci) == 2
    await argo_cell.argo.wait_for(lambda: all(w["status"]["phase"] == "Succeeded" for w in ci))
    for workflow in ci:
        assert workflow["spec"]["activeDeadlineSeconds"] == 1800  # FORGE_JOB_TIMEOUT_CI
        reply = workflow["status"]["outputs"]["parameters"][0]
        assert reply["name"] == "forge-reply"
        assert '"status":"success"' in reply["value"]
    # The release job ran as a workflow too, and the release names the run.
    release = await argo_cell.argo.wait_for(lambda: _workflows(argo_cell, run_id, "release"))
    assert len(release) == 1
    deadline = time.monotonic() + 60
    while True:
        resp = await client.get(f"/v1/releases/{repo.repository}/api/{sha}")
        if resp.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["pipeline_run_id"] == run_id
    assert [a["digest"] for a in resp.json()["artifacts"]] == [artifact["digest"]]
    assert (await client.get(f"/v1/runs/{run_id}")).json()["release_error"] is None
    # The dispatcher watched the workflow events (its polling is slower than this test).
    assert argo_cell.argo.watch_connections >= 1


async def test_cancelling_a_run_stops_its_workflow(argo_cell: ArgoCell, client: httpx.AsyncClient) -> None:
    repo = argo_cell.cell.repo("cancel")
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML.format(extra=""),
            "api/.forge/project.toml": project(
                '[[phases.lint.steps]]\nname = "forever"\nrun = "echo started; sleep 600"\n'
            ),
        }
    )
    run_id = await _create(client, repo, sha)
    await _wait(client, run_id, until=lambda r: any(s["status"] == "running" for s in steps_of(r).values()))
    (workflow,) = _workflows(argo_cell, run_id, "ci")
    assert workflow["status"]["phase"] == "Running"
    resp = await client.delete(f"/v1/runs/{run_id}")
    assert resp.status_code == 204, resp.text
    name = workflow["metadata"]["name"]
    await argo_cell.argo.wait_for(lambda: name in argo_cell.argo.stops)
    await argo_cell.argo.wait_for(lambda: workflow["status"]["phase"] == "Failed")
    assert workflow["status"]["message"] == "Stopped with strategy 'Stop'"
    run = await _wait(client, run_id)
    assert run["status"] == "cancelled"
    assert steps_of(run)[("lint", "api", "forever")]["status"] in ("cancelled", "failed")


async def test_a_job_over_its_timeout_fails_the_run_at_the_workflow_deadline(
    argo_cell: ArgoCell, client: httpx.AsyncClient
) -> None:
    repo = argo_cell.cell.repo("slow")
    marker = uuid.uuid4().hex[:8]
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML.format(extra='timeout = "3s"'),
            "api/.forge/project.toml": project(
                '[[phases.lint.steps]]\nname = "quick"\nrun = "echo ok"\n'
                f'[[phases.test.steps]]\nname = "hang"\nrun = "echo {marker}; sleep 120"\n'
            ),
        }
    )
    run_id = await _create(client, repo, sha)
    run = await _wait(client, run_id)
    assert run["status"] == "failed", run
    assert run["failed_phase"] == "test"
    assert "timed out after 3s" in run["error"], run["error"]
    # The test phase's job had the phase timeout as its deadline.
    (workflow,) = [w for w in _workflows(argo_cell, run_id, "ci") if w["spec"]["activeDeadlineSeconds"] == 3]
    # Argo's deadline ended it, not a stop from the dispatcher.
    assert workflow["status"]["phase"] == "Failed"
    assert workflow["status"]["message"] == "Step exceeded its deadline"


async def test_a_job_over_64_kib_reaches_its_pod_through_s3(argo_cell: ArgoCell, client: httpx.AsyncClient) -> None:
    """Two steps with 40 kB commands: the CI job is over the 64 KiB a workflow carries inline,
    so the workflow holds a reference to it in S3, which the pod resolves."""
    repo = argo_cell.cell.repo("big")
    filler = "x" * 40_000
    steps = "".join(f'[[phases.lint.steps]]\nname = "s{i}"\nrun = "echo s{i} # {filler}"\n' for i in range(2))
    sha = repo.commit({".forge/repo.toml": REPO_TOML.format(extra=""), "api/.forge/project.toml": project(steps)})
    run_id = await _create(client, repo, sha)
    run = await _wait(client, run_id)
    assert run["status"] == "success", run
    assert [s["status"] for s in steps_of(run).values()] == ["success", "success"]
    (workflow,) = _workflows(argo_cell, run_id, "ci")
    env = {e["name"]: e["value"] for e in workflow["spec"]["templates"][0]["container"]["env"]}
    job = json.loads(base64.b64decode(env["FORGE_JOB"]))
    assert set(job) == {"$result_ref"}
    assert job["$result_ref"]["key"].startswith(f"pipeline-runs/{run_id}/results/ci-job/")
    assert job["$result_ref"]["size"] > 64 * 1024


async def test_a_workflow_the_server_refuses_fails_the_run_with_its_reason(
    argo_cell: ArgoCell, client: httpx.AsyncClient
) -> None:
    repo = argo_cell.cell.repo("refused")
    sha = repo.commit(
        {
            ".forge/repo.toml": REPO_TOML.format(extra=""),
            "api/.forge/project.toml": project('[[phases.lint.steps]]\nname = "style"\nrun = "echo ok"\n'),
        }
    )
    denial = 'workflows.argoproj.io is forbidden: User "system:serviceaccount:forge:forge-pipeline" cannot create'
    argo_cell.argo.refusing = (403, denial)
    try:
        run_id = await _create(client, repo, sha)
        run = await _wait(client, run_id)
    finally:
        argo_cell.argo.refusing = None
    assert run["status"] == "failed", run
    assert "the Argo server refused workflow" in run["error"]
    assert "is forbidden" in run["error"]
    assert _workflows(argo_cell, run_id) == []
