"""Helpers of the release tests: a small API client and valid request bodies with unique names."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import psycopg


class Api:
    """A thin client of the release API with one identity."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, headers: dict[str, str], identity: str = "") -> None:
        self.http = http
        self.base = base_url
        self.headers = headers
        self.identity = identity  # what the platform records as created_by / triggered_by

    async def create(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(f"{self.base}/v1/releases", json=body, headers=self.headers)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"{self.base}{path}", params=params or None, headers=self.headers)

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(f"{self.base}{path}", json=body, headers=self.headers)

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(f"{self.base}{path}", headers=self.headers)


def sha() -> str:
    return secrets.token_hex(20)


def names() -> tuple[str, str]:
    """A fresh (repository, project): the platform is shared by the whole session."""
    tag = uuid.uuid4().hex[:10]
    return f"acme-{tag}/repo-{tag}", f"svc-{tag}"


def artifact(name: str = "api-image", type_: str = "container") -> dict[str, str]:
    return {
        "name": name,
        "type": type_,
        "tracking_oci_uri": f"registry.example.com/acme/{name}:tracking",
        "primary_published_uri": f"ghcr.io/acme/{name}:1.0.0",
    }


def release_body(repository: str, project: str, commit: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "repository": repository,
        "project": project,
        "commit_sha": commit or sha(),
        "artifacts": [artifact()],
        **extra,
    }


async def finished_run(
    http: httpx.AsyncClient, base_url: str, platform: Any, repository: str, commit: str, status: str = "success"
) -> str:
    """A run of ``repository`` at ``commit`` that has ended with ``status``.

    The run is created and cancelled through the API (a real, finished run). ``success`` is then
    recorded in the pipeline's table: the session platform has no repository its workers could
    build, and the way a run succeeds is the execution tests' subject; here only the outcome the
    pipeline API reports matters.
    """
    headers = platform.headers(f"runner-{uuid.uuid4().hex[:8]}@example.com", "developer")
    resp = await http.post(
        f"{base_url}/v1/runs",
        json={"repository": repository, "branch": "main", "commit_sha": commit, "trigger_type": "manual"},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["id"]
    cancel = await http.delete(f"{base_url}/v1/runs/{run_id}", headers=headers)
    assert cancel.status_code in (204, 409), cancel.text  # 409: it had already ended (failed)
    if status != "cancelled":
        async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
            await conn.execute("UPDATE pipeline.runs SET status = %s WHERE id = %s", (status, run_id))
    return run_id
