"""The batch commands of ``forge``, run as a user runs them, against the batch tests' gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
from deployment.support import APPROVER, create_release

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .test_cancel_runs import DEVELOPER, _repo, _run


def forge(gateway: Process, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge_cli", "--api", gateway.url, "--token", token, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


async def test_runs_cancel_by_branch_dry_run_then_for_real(
    gw: httpx.AsyncClient, platform: Platform, batch_gateway: Process
) -> None:
    repository = _repo()
    stale = await _run(gw, platform, repository, "feature/old")
    kept = await _run(gw, platform, repository, "main")
    token = platform.token(DEVELOPER, "developer")
    args = ("runs", "cancel", "--repository", repository, "--branch", "feature/old")

    dry = forge(batch_gateway, token, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["results"] == [{"id": stale, "status": 204}]

    done = forge(batch_gateway, token, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dry_run"] is False
    viewer = platform.headers(DEVELOPER, "viewer")
    assert (await gw.get(f"/v1/runs/{stale}", headers=viewer)).json()["status"] == "cancelled"
    assert (await gw.get(f"/v1/runs/{kept}", headers=viewer)).json()["status"] == "pending"

    # Several ids, one already cancelled: the results are printed and the exit status says "refused".
    partly = forge(batch_gateway, token, "runs", "cancel", stale, kept)
    assert partly.returncode == 1
    assert [item["status"] for item in json.loads(partly.stdout)["results"]] == [409, 204]

    usage = forge(batch_gateway, token, "runs", "cancel", "--branch", "main")
    assert usage.returncode == 2
    assert usage.stderr.startswith("forge: ")


async def test_runs_cancel_of_one_run_says_what_it_did(
    gw: httpx.AsyncClient, platform: Platform, batch_gateway: Process
) -> None:
    token = platform.token(DEVELOPER, "developer")
    first, second = await _run(gw, platform, _repo()), await _run(gw, platform, _repo())

    said = forge(batch_gateway, token, "runs", "cancel", first, "-o", "table")
    assert (said.returncode, said.stdout, said.stderr) == (0, f"cancelled run {first}\n", "")
    viewer = platform.headers(DEVELOPER, "viewer")
    assert (await gw.get(f"/v1/runs/{first}", headers=viewer)).json()["status"] == "cancelled"

    # -o json (the default when piped), for scripts: which run, and the status it has now.
    as_json = forge(batch_gateway, token, "runs", "cancel", second, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"id": second, "status": "cancelled"}
    assert (await gw.get(f"/v1/runs/{second}", headers=viewer)).json()["status"] == "cancelled"

    # A refusal keeps the one-line error on stderr, whatever the format.
    again = forge(batch_gateway, token, "runs", "cancel", first, "-o", "table")
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith("forge: 409 resource_conflict: "), again.stderr


async def test_approvals_batch_and_promote_report_each_item(
    gw: httpx.AsyncClient, platform: Platform, batch_gateway: Process
) -> None:
    repository = f"acme{uuid.uuid4().hex[:10]}/shop"
    release = (await create_release(gw, platform, repository, "api"))["id"]
    approver = platform.token(APPROVER, "approver")
    args = ("approvals", "batch", release, str(uuid.uuid4()), "--environment", "staging", "--justification", "CAB-1")

    result = forge(batch_gateway, approver, *args)

    assert result.returncode == 1, result.stderr
    answer = json.loads(result.stdout)
    assert [item["status"] for item in answer["results"]] == [201, 404]
    assert answer["results"][0]["result"]["approver"] == APPROVER

    promote = forge(
        batch_gateway,
        platform.token(DEVELOPER, "developer"),
        "deployments",
        "promote",
        repository,
        "api",
        "--from",
        "dev",
        "--to",
        "production",
        "--approval",
        f"{release}=not-an-id",
    )
    # The approvals map holds ids: a malformed one is the whole request's 400.
    assert promote.returncode == 1
    assert promote.stdout == ""
    assert "400 invalid_request" in promote.stderr
