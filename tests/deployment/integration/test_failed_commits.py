"""A deployment whose GitOps commit fails is announced: one ``deployment.failed``, recorded with
the row's failure, reaches a subscriber through the gateway; a push that lost a race and landed
on a retry is not a failure, nor is a push the remote took but answered too late. A commit that
fails inside the service (its clone unusable) fails the deployment at once and frees its slot.

The GitOps repository is a bare repository whose hooks refuse pushes, or hold the pusher, while
a flag file exists, the way a protected branch, a freeze or a slow server does. The service
reaches it as a remote (``https://gitops.invalid/...``, rewritten to the directory by git's own
``url.<base>.insteadOf``), so it pushes with the git CLI and the hooks run as on a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from deployment.support import Dedicated, clone, create_release, deploy, git, unique_repository
from forge_dev.testing import Platform

REMOTE = "https://gitops.invalid/forge/gitops.git"
FROZEN_HOOK = """#!/bin/sh
if [ -e "{flag}" ]; then
  echo "gitops policy: pushes are frozen" >&2
  exit 1
fi
"""


def _guarded_repository(tmp_path: Path) -> tuple[Path, Path]:
    """A bare GitOps repository refusing every push while the returned flag file exists."""
    bare = tmp_path / "guarded-gitops.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    flag = tmp_path / "frozen"
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(FROZEN_HOOK.format(flag=flag))
    hook.chmod(0o755)
    return bare, flag


# Holds the pusher after the branch moved (post-receive), while a flag file exists, until git's
# process group is killed at FORGE_GITOPS_TIMEOUT; "cut" also takes the fetch path away first.
SLOW_HOOK = """#!/bin/sh
if [ -e "{cut}" ]; then
  rm -f "{link}"
fi
if [ -e "{slow}" ] || [ -e "{cut}" ]; then
  exec sleep 300
fi
"""


def _remote_env(repository: Path, **extra: str) -> dict[str, str]:
    """A dedicated instance's settings reaching ``repository`` as the remote ``REMOTE``."""
    return {
        "FORGE_GITOPS_URL": REMOTE,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.{repository.as_uri()}.insteadOf",
        "GIT_CONFIG_VALUE_0": REMOTE,
        **extra,
    }


async def _events_until(lines: Any, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The stream's envelopes (``data:`` lines) up to and including the first one ``done`` accepts."""
    found: list[dict[str, Any]] = []
    async for line in lines:
        if line.startswith("data:"):
            found.append(json.loads(line[len("data:") :]))
            if done(found[-1]):
                return found
    raise AssertionError(f"the stream ended after {[e['event_type'] for e in found]}")


@contextlib.asynccontextmanager
async def _watched(
    platform: Platform, instance: Dedicated, repository: str, viewer: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncIterator[str]]]:
    """A client of ``instance`` through a gateway of its own (as clients reach it in production),
    and the lines of the repository's ``/v1/events`` feed, subscribed before anything happens."""
    gateway = platform.start_process("gateway", env={"FORGE_DEPLOYMENT_URL": instance.url})
    try:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=60.0) as client,
            client.stream("GET", f"/v1/events?repository={repository}&timeout=120", headers=viewer) as feed,
        ):
            assert feed.status_code == 200
            lines = feed.aiter_lines()
            assert await anext(lines) == ": subscribed"
            yield client, lines
    finally:
        gateway.stop()


async def _metric(instance: Dedicated, series: str) -> float:
    async with httpx.AsyncClient(base_url=instance.url, timeout=30.0) as direct:
        text = (await direct.get("/metrics")).text
    m = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"{series} is not exported"
    return float(m.group(1))


async def _push_retries(instance: Dedicated) -> float:
    return await _metric(instance, "forge_deployment_gitops_push_retries_total")


FAILED_DEV = 'forge_deployments_total{environment="dev",status="failed"}'


async def test_a_refused_push_fails_the_deployment_with_one_deployment_failed_and_a_retried_push_does_not(
    platform: Platform,
    gw: httpx.AsyncClient,
    dedicated_deployment: Callable[[dict[str, str]], Dedicated],
    tmp_path: Path,
) -> None:
    bare, flag = _guarded_repository(tmp_path)
    # Woken by each landed commit; no periodic fetch moves its view of the head meanwhile.
    instance = dedicated_deployment(_remote_env(bare, FORGE_RECONCILE_INTERVAL="10m"))
    repository = unique_repository()
    first = await create_release(gw, platform, repository, "api")
    refused = await create_release(gw, platform, repository, "refused")
    raced = await create_release(gw, platform, repository, "raced")
    viewer = platform.headers("depfail-watcher@acme.io", "viewer")
    async with _watched(platform, instance, repository, viewer) as (client, lines):
        # A push that lands: active once the reconciler sees it.
        landed = await deploy(client, platform, first["id"], "dev")
        assert landed.status_code == 201, landed.text
        first_id = landed.json()["deployment_id"]
        async with asyncio.timeout(60):
            events = await _events_until(
                lines,
                lambda e: e["event_type"] == "deployment.completed" and e["data"]["deployment_id"] == first_id,
            )

        # The remote refuses the push: 502, the row failed, and deployment.failed.
        flag.touch()
        failed_before = await _metric(instance, FAILED_DEV)
        resp = await deploy(client, platform, refused["id"], "dev")
        assert resp.status_code == 502, resp.text
        assert await _metric(instance, FAILED_DEV) == failed_before + 1  # counted as the timeout's are
        error = resp.json()["error"]
        assert error["code"] == "bad_gateway"
        refused_id = error["details"]["deployment_id"]
        assert "pre-receive hook declined" in error["details"]["reason"]
        assert "gitops policy: pushes are frozen" in error["details"]["reason"]
        flag.unlink()

        # Another writer moves the branch behind the service's back: its next push builds on
        # the head it last saw, is refused as non-fast-forward, and lands on a retry.
        operator = clone(bare.as_uri(), tmp_path / "operator")
        (operator / "README.md").write_text("operated by hand\n")
        git("add", "-A", cwd=operator)
        git("-c", "user.name=Ops", "-c", "user.email=ops@acme.io", "commit", "-q", "-m", "ops", cwd=operator)
        git("push", "-q", "origin", "HEAD:main", cwd=operator)
        moved = git("rev-parse", "HEAD", cwd=operator).strip()
        retries = await _push_retries(instance)
        retried = await deploy(client, platform, raced["id"], "dev")
        assert retried.status_code == 201, retried.text
        raced_id, raced_sha = retried.json()["deployment_id"], retried.json()["gitops_commit_sha"]
        assert await _push_retries(instance) > retries
        assert git("--git-dir", str(bare), "rev-parse", f"{raced_sha}^").strip() == moved

        # Events are published in the order they were recorded: everything about the refused
        # deployment came before the raced one's deployment.completed.
        async with asyncio.timeout(60):
            events += await _events_until(
                lines,
                lambda e: e["event_type"] == "deployment.completed" and e["data"]["deployment_id"] == raced_id,
            )

        history = await client.get(f"/v1/deployments/dev/{repository}/refused/history", headers=viewer)
        assert history.status_code == 200, history.text
        [entry] = history.json()["deployments"]
        assert (entry["id"], entry["status"], entry["gitops_commit_sha"]) == (refused_id, "failed", None)

    failed = [e for e in events if e["event_type"] == "deployment.failed"]
    assert len(failed) == 1, [(e["event_type"], e["data"]) for e in events]
    # The timeout's deployment.failed shape, exactly; the message is the row's error.
    assert failed[0]["data"] == {
        "deployment_id": refused_id,
        "environment": "dev",
        "status": "failed",
        "error_message": entry["error"],
        "repository": repository,
        "project": "refused",
    }
    assert entry["error"].startswith(f"GitOps commit failed: pushing to {REMOTE} failed: [remote rejected]")
    assert "gitops policy: pushes are frozen" in entry["error"]

    by_deployment = [(e["event_type"], e["data"].get("deployment_id")) for e in events if "deployment_id" in e["data"]]
    assert by_deployment == [
        ("deployment.created", first_id),
        ("deployment.completed", first_id),
        ("deployment.failed", refused_id),
        ("deployment.created", raced_id),
        ("deployment.completed", raced_id),
    ]


async def test_a_commit_failing_inside_the_service_fails_the_deployment_at_once_and_frees_its_slot(
    platform: Platform,
    gw: httpx.AsyncClient,
    dedicated_deployment: Callable[[dict[str, str]], Dedicated],
    tmp_path: Path,
) -> None:
    bare = tmp_path / "gitops.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    clone_dir = tmp_path / "clone"
    # One pending slot: a deployment left pending would refuse the next one with 429.
    instance = dedicated_deployment(
        _remote_env(bare, FORGE_GITOPS_WORKDIR=str(clone_dir), FORGE_MAX_PENDING_DEPLOYMENTS="1")
    )
    repository = unique_repository()
    release = await create_release(gw, platform, repository, "api")
    viewer = platform.headers("depfail-watcher@acme.io", "viewer")
    # The service's clone breaks under it: a file where each object directory must be, so no
    # object can be written (as an unwritable directory or a full disk would refuse it).
    blocked = [clone_dir / "objects" / f"{i:02x}" for i in range(256)]
    for path in blocked:
        path.write_bytes(b"")
    async with _watched(platform, instance, repository, viewer) as (client, lines):
        failed_before = await _metric(instance, FAILED_DEV)
        resp = await deploy(client, platform, release["id"], "dev")
        assert resp.status_code == 502, resp.text
        error = resp.json()["error"]
        reason = "the deployment service failed locally: Not a directory (ENOTDIR)"
        assert error == {
            "code": "bad_gateway",
            "message": f"the GitOps commit failed: {reason}",
            "details": {"reason": reason, "deployment_id": error["details"]["deployment_id"]},
        }
        failed_id = error["details"]["deployment_id"]
        assert str(clone_dir) not in resp.text  # the service's paths stay in its log
        assert await _metric(instance, FAILED_DEV) == failed_before + 1

        history = await client.get(f"/v1/deployments/dev/{repository}/api/history", headers=viewer)
        assert history.status_code == 200, history.text
        [entry] = history.json()["deployments"]
        assert (entry["id"], entry["status"], entry["gitops_commit_sha"]) == (failed_id, "failed", None)
        assert entry["error"] == f"GitOps commit failed: {reason}"

        # Repaired, the same release deploys to the same target: the failed one holds no slot.
        for path in blocked:
            path.unlink()
        retried = await deploy(client, platform, release["id"], "dev")
        assert retried.status_code == 201, retried.text
        retried_id = retried.json()["deployment_id"]
        async with asyncio.timeout(60):
            events = await _events_until(
                lines,
                lambda e: e["event_type"] == "deployment.completed" and e["data"]["deployment_id"] == retried_id,
            )

    by_deployment = [(e["event_type"], e["data"].get("deployment_id")) for e in events if "deployment_id" in e["data"]]
    assert by_deployment == [
        ("deployment.failed", failed_id),
        ("deployment.created", retried_id),
        ("deployment.completed", retried_id),
    ]
    [failed] = [e for e in events if e["event_type"] == "deployment.failed"]
    assert failed["data"]["error_message"] == entry["error"]
    # The operator gets what the client does not: the exception, with its path and traceback.
    assert instance.process.log_path is not None
    logged = instance.process.log_path.read_text(errors="replace")
    assert "deployment.gitops_commit_failed" in logged
    assert "NotADirectoryError" in logged
    assert str(clone_dir / "objects") in logged


async def test_a_push_the_remote_took_but_answered_late_commits_the_deployment(
    platform: Platform,
    gw: httpx.AsyncClient,
    dedicated_deployment: Callable[[dict[str, str]], Dedicated],
    tmp_path: Path,
) -> None:
    bare = tmp_path / "gitops.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    # The service fetches and pushes through a link to the repository ("cut" removes it).
    link = tmp_path / "gitops-link.git"
    link.symlink_to(bare)
    slow, cut = tmp_path / "slow", tmp_path / "cut"
    hook = bare / "hooks" / "post-receive"
    hook.write_text(SLOW_HOOK.format(slow=slow, cut=cut, link=link))
    hook.chmod(0o755)
    instance = dedicated_deployment(_remote_env(link, FORGE_GITOPS_TIMEOUT="3s", FORGE_GITOPS_COMMIT_TIMEOUT="20s"))
    repository = unique_repository()
    late = await create_release(gw, platform, repository, "late")
    unknown = await create_release(gw, platform, repository, "unknown")
    viewer = platform.headers("depfail-watcher@acme.io", "viewer")
    async with _watched(platform, instance, repository, viewer) as (client, lines):
        # The branch moves, the answer does not come: the push is killed at 3s, the remote
        # is asked, holds the commit, and the deployment is committed like any other.
        slow.touch()
        resp = await deploy(client, platform, late["id"], "dev")
        assert resp.status_code == 201, resp.text
        late_id, late_sha = resp.json()["deployment_id"], resp.json()["gitops_commit_sha"]
        assert git("--git-dir", str(bare), "rev-parse", "main").strip() == late_sha
        async with asyncio.timeout(60):
            events = await _events_until(
                lines,
                lambda e: e["event_type"] == "deployment.completed" and e["data"]["deployment_id"] == late_id,
            )
        current = await client.get(f"/v1/deployments/dev/{repository}/late", headers=viewer)
        assert current.status_code == 200, current.text
        active = current.json()
        assert (active["deployment_id"], active["status"], active["gitops_commit_sha"]) == (
            late_id,
            "active",
            late_sha,
        )

        # The same, but the remote cannot be asked afterwards either: failed as a timeout,
        # saying which commit may have landed (it did).
        slow.unlink()
        cut.touch()
        resp = await deploy(client, platform, unknown["id"], "dev")
        assert resp.status_code == 504, resp.text
        error = resp.json()["error"]
        landed = git("--git-dir", str(bare), "rev-parse", "main").strip()
        assert landed != late_sha
        assert error["code"] == "gateway_timeout"
        assert error["details"]["operation"] == "pushing to"
        assert error["details"]["unconfirmed_commit"] == landed
        assert f"commit {landed} may have landed" in error["message"]
        unknown_id = error["details"]["deployment_id"]
        async with asyncio.timeout(60):
            events += await _events_until(
                lines,
                lambda e: e["event_type"] == "deployment.failed" and e["data"]["deployment_id"] == unknown_id,
            )
        history = await client.get(f"/v1/deployments/dev/{repository}/unknown/history", headers=viewer)
        [entry] = history.json()["deployments"]
        assert (entry["id"], entry["status"]) == (unknown_id, "failed")
        assert f"commit {landed} may have landed" in entry["error"]

    by_deployment = [(e["event_type"], e["data"].get("deployment_id")) for e in events if "deployment_id" in e["data"]]
    assert by_deployment == [
        ("deployment.created", late_id),
        ("deployment.completed", late_id),
        ("deployment.failed", unknown_id),
    ]
    assert instance.process.log_path is not None
    assert "gitops.push_landed_late" in instance.process.log_path.read_text(errors="replace")
