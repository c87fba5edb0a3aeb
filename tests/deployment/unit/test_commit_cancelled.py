"""A commit cancelled (the process shutting down) stays a cancellation: it is neither turned into
a failed deployment nor swallowed, and it leaves the GitOps repository's lock free."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest

from forge_common.db import Pool
from forge_deployment.clients import ApprovalClient, ReleaseClient
from forge_deployment.domain import NewDeployment, Release
from forge_deployment.gitops import Author, GitOpsRepository
from forge_deployment.service import DeploymentService

RELEASE = Release(
    id="5b0c1c9e-8a4e-4a4e-9d55-0a4b3f1f2c10",
    repository="acme/shop",
    project="api",
    commit_sha="0123456789abcdef0123456789abcdef01234567",
    release_number=42,
    oci_uri="oci://registry.local/acme/shop/api:42",
)


class _NoDatabase:
    """A cancelled commit records nothing: any use of the pool fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the pool was used ({name}) for a cancelled commit")


async def _written(fifo: Path, commit: asyncio.Task[Any]) -> None:
    """Until something is written to ``fifo`` (failing if ``commit`` ends first, or in 30s)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # no writer needed to open it this way
    written = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, written.set)
    try:
        waiting = asyncio.ensure_future(written.wait())
        await asyncio.wait({waiting, commit}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert written.is_set(), f"the push never reached the remote's hook: {commit}"
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


async def test_a_commit_cancelled_mid_push_propagates_and_records_nothing(tmp_path: Path) -> None:
    remote = tmp_path / "gitops.git"
    gitops = GitOpsRepository(
        remote.as_uri(), "main", tmp_path / "w", Author("Forge", "forge@forge.invalid"), use_cli=True
    )
    await gitops.open()
    first = await gitops.commit_file("f.yaml", b"1\n", "one\n", Author.of("a"))
    # The remote holds the push (a hook that never ends) and says so through a FIFO.
    reached = tmp_path / "reached"
    os.mkfifo(reached)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(f'#!/bin/sh\necho reached > "{reached}"\nexec sleep 300\n')
    hook.chmod(0o755)
    service = DeploymentService(
        cast(Pool, _NoDatabase()), cast(ReleaseClient, None), cast(ApprovalClient, None), gitops, max_pending=1
    )
    deployment = NewDeployment.create(RELEASE, "dev", "alice@acme.io", None, dt.datetime.now(dt.UTC))

    commit = asyncio.create_task(service._commit(deployment))
    await _written(reached, commit)  # the push is in the remote's hands
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit

    # Nothing landed, and the lock is free for the next commit.
    assert _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip() == first
    hook.unlink()
    second = await gitops.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))
    assert _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip() == second
