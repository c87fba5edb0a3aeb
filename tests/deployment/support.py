"""Helpers for deployment tests: releases through the real release service, deployments, and
git inspection of the GitOps repository."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from forge_dev.stack import Process
from forge_dev.testing import Platform

DEVELOPER = "dev-deployer@acme.io"
RELEASER = "releaser@acme.io"
APPROVER = "approver@acme.io"


def unique_repository() -> str:
    return f"acme{uuid.uuid4().hex[:10]}/shop"


def random_sha() -> str:
    return secrets.token_hex(20)


async def create_release(
    client: httpx.AsyncClient, platform: Platform, repository: str, project: str, creator: str = RELEASER
) -> dict[str, Any]:
    resp = await client.post(
        "/v1/releases",
        json={"repository": repository, "project": project, "commit_sha": random_sha(), "artifacts": []},
        headers=platform.headers(creator, "developer"),
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    full = await client.get(f"/v1/releases/{body['id']}", headers=platform.headers(creator, "viewer"))
    assert full.status_code == 200, full.text
    release: dict[str, Any] = full.json()
    return release


async def deploy(
    client: httpx.AsyncClient,
    platform: Platform,
    release_id: str,
    environment: str,
    approval_id: str | None = None,
    user: str = DEVELOPER,
) -> httpx.Response:
    body: dict[str, Any] = {"release_id": release_id, "environment": environment}
    if approval_id is not None:
        body["approval_id"] = approval_id
    return await client.post("/v1/deployments", json=body, headers=platform.headers(user, "developer"))


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def clone(url: str, into: Path) -> Path:
    """A fresh clone of the GitOps repository, as an operator (or Argo CD) would see it."""
    git("clone", "-q", url, str(into))
    return into


def database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class Dedicated:
    """A deployment instance with its own database and GitOps repository (not behind the gateway)."""

    def __init__(self, process: Process, gitops_url: str, database_url: str) -> None:
        self.process = process
        self.gitops_url = gitops_url
        self.database_url = database_url

    @property
    def url(self) -> str:
        return self.process.url
