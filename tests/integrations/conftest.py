"""Fixtures of the integration tests: Forge talking to stand-ins for GitHub and an OIDC issuer.

``github_forge`` is a release, approval and deployment service with GitHub reporting on
(``FORGE_GITHUB_*`` pointing at :class:`FakeGitHub`), on a database of their own (so the
session platform's senders, which have no token, never see their GitHub outbox), with a gateway
of their own in front. Its GitOps repository is served by ``git daemon`` and has a pre-receive
hook that refuses every push while a flag file exists: how a test makes a deployment fail.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from forge_dev.stack import Process, free_port, wait_tcp
from forge_dev.testing import Platform

from .github_api import FakeGitHub
from .oidc_issuer import LocalIssuer

GITHUB_TOKEN = "ghp_integration_token"


@dataclass
class GitHubForge:
    gateway: Process
    freeze_flag: Path  # while it exists, the GitOps repository refuses pushes

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="session")
async def fake_github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub().start()
    yield fake
    await fake.stop()


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def gitops_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(git:// URL of a GitOps repository, its freeze flag)``, served by ``git daemon``."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("gitops-daemon")
    bare = root / "gitops.git"
    _git("init", "-q", "--bare", "-b", "main", str(bare))
    seed = root / "seed"
    _git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("GitOps repository of the integration tests\n")
    _git("add", "README.md", cwd=seed)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "seed", cwd=seed)
    _git("push", "-q", str(bare), "main", cwd=seed)
    flag = root / "frozen"
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(f'#!/bin/sh\nif [ -e "{flag}" ]; then echo "the GitOps repository is frozen" >&2; exit 1; fi\n')
    hook.chmod(0o755)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={root}",
            "--export-all",
            "--enable=receive-pack",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_tcp(port, 15)
        yield f"git://127.0.0.1:{port}/gitops.git", flag
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture(scope="session")
def github_forge(platform: Platform, fake_github: FakeGitHub, gitops_daemon: tuple[str, Path]) -> Iterator[GitHubForge]:
    name = f"forge_github_{uuid.uuid4().hex[:10]}"
    admin = platform.stack.infra.admin_database_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = urlsplit(platform.database_url)._replace(path=f"/{name}").geturl()
    gitops_url, flag = gitops_daemon
    common = {
        "FORGE_DATABASE_URL": database,
        "FORGE_DB_POOL_MIN": "1",
        "FORGE_DB_POOL_MAX": "4",
        "FORGE_GITHUB_API_URL": fake_github.url,
        "FORGE_GITHUB_TOKEN": GITHUB_TOKEN,
        "FORGE_GITHUB_STATUS_POLL_INTERVAL": "0.05",
        "FORGE_PUBLIC_URL": "https://forge.example.com",
    }
    started: list[Process] = []
    try:
        release = platform.start_process("release", env=common)
        started.append(release)
        approval = platform.start_process("approval", env={**common, "FORGE_RELEASE_URL": release.url})
        started.append(approval)
        deployment = platform.start_process(
            "deployment",
            env={
                **common,
                "FORGE_RELEASE_URL": release.url,
                "FORGE_APPROVAL_URL": approval.url,
                "FORGE_GITOPS_URL": gitops_url,
                "FORGE_GITOPS_PUSH_ATTEMPTS": "2",
                "FORGE_RECONCILE_INTERVAL": "0.2",
            },
        )
        started.append(deployment)
        gateway = platform.start_process(
            "gateway",
            env={
                "FORGE_RELEASE_URL": release.url,
                "FORGE_APPROVAL_URL": approval.url,
                "FORGE_DEPLOYMENT_URL": deployment.url,
            },
        )
        started.append(gateway)
        yield GitHubForge(gateway, flag)
    finally:
        for proc in reversed(started):
            proc.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def forge(github_forge: GitHubForge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=github_forge.url, timeout=60.0) as client:
        yield client


@pytest.fixture(scope="session")
async def github_oidc() -> AsyncIterator[LocalIssuer]:
    issuer = await LocalIssuer().start()
    yield issuer
    await issuer.stop()


@pytest.fixture(scope="session")
def workload_gateway(
    platform: Platform, github_oidc: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A gateway of the session platform that trusts the local issuer as GitHub's, with the
    issue's configuration form: jobs of ``acme-*/*`` on main may act as developers."""
    config = tmp_path_factory.mktemp("workload") / "trusted-issuers.toml"
    config.write_text(
        f"""
[[issuers]]
issuer = "{github_oidc.url}"
jwks_url = "{github_oidc.jwks_url}"
audience = "forge"
[[issuers.rules]]
claims = {{ repository = "acme-*/*", ref = "refs/heads/main" }}   # every listed claim must match (globs)
role = "developer"
repository_claim = "repository"
[[issuers.rules]]
claims = {{ repository = "acme-*/*", ref = "refs/tags/*" }}
role = "viewer"
"""
    )
    proc = platform.start_process("gateway", env={"FORGE_TRUSTED_ISSUERS": str(config)})
    yield proc
    proc.stop()
