"""The role table of ARCHITECTURE.md, enforced by every service's guard: checked against the real
pipeline service through the gateway, and exhaustively against a shell-built app."""

from __future__ import annotations

import uuid

import httpx
import pytest

from forge_common.auth import Permission, permissions_for
from forge_dev.testing import Platform


def headers(platform: Platform, *roles: str, service_account: bool = False) -> dict[str, str]:
    return platform.headers(f"roles-{uuid.uuid4().hex[:6]}@example.com", *roles, service_account=service_account)


async def test_viewer_reads_runs_but_cannot_create_them(platform: Platform) -> None:
    repository = f"guards/{uuid.uuid4().hex[:8]}"
    viewer = headers(platform, "viewer")
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        resp = await client.get("/v1/runs", params={"repository": repository}, headers=viewer)
        assert resp.status_code == 200, resp.text
        assert resp.json()["runs"] == []
        run = {"repository": repository, "branch": "main", "commit_sha": "a" * 40, "trigger_type": "manual"}
        resp = await client.post("/v1/runs", json=run, headers=viewer)
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "authorization_failed"
        assert resp.json()["error"]["details"]["required_permission"] == "runs:write"
        # Approvers are viewers for runs too.
        resp = await client.post("/v1/runs", json=run, headers=headers(platform, "approver"))
        assert resp.status_code == 403


async def test_worker_token_is_refused_user_actions(platform: Platform) -> None:
    worker = headers(platform, "worker", service_account=True)
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        run = {"repository": "o/r", "branch": "main", "commit_sha": "a" * 40, "trigger_type": "manual"}
        resp = await client.post("/v1/runs", json=run, headers=worker)
        assert resp.status_code == 403
        assert "service-account" in resp.json()["error"]["message"]
        resp = await client.delete(f"/v1/runs/{uuid.uuid4()}", headers=worker)
        assert resp.status_code == 403
        # ... while reading is allowed.
        resp = await client.get("/v1/runs", params={"repository": "o/r"}, headers=worker)
        assert resp.status_code == 200


async def test_user_token_is_refused_the_internal_status_endpoints(platform: Platform) -> None:
    step, task = uuid.uuid4(), uuid.uuid4()
    async with httpx.AsyncClient(base_url=platform.gateway_url) as client:
        for user_roles in (("admin",), ("developer",), ("worker",)):  # a *user* holding the worker role too
            resp = await client.put(
                f"/v1/steps/{step}/status", json={"status": "running"}, headers=headers(platform, *user_roles)
            )
            assert resp.status_code == 403, (user_roles, resp.text)
            assert resp.json()["error"]["details"]["required_permission"] == "internal:status"
        resp = await client.put(
            f"/v1/tasks/{task}/status", json={"status": "running"}, headers=headers(platform, "admin")
        )
        assert resp.status_code == 403
        # A worker service account passes the guard; the step simply does not exist.
        worker = headers(platform, "worker", service_account=True)
        resp = await client.put(f"/v1/steps/{step}/status", json={"status": "running"}, headers=worker)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "resource_not_found"


# role -> expected status of (GET read, POST write, PUT internal status)
TABLE = {
    ("viewer",): (200, 403, 403),
    ("developer",): (200, 201, 403),
    ("approver",): (200, 403, 403),
    ("admin",): (200, 201, 403),
    ("viewer", "developer"): (200, 201, 403),
    ("nobody",): (403, 403, 403),
}


@pytest.mark.parametrize("roles", list(TABLE))
async def test_role_table_for_users(platform: Platform, widgets: str, roles: tuple[str, ...]) -> None:
    hdrs = headers(platform, *roles)
    async with httpx.AsyncClient(base_url=widgets) as client:
        got = (
            (await client.get("/v1/widgets", headers=hdrs)).status_code,
            (await client.post("/v1/widgets", json={"name": "w", "size": 1}, headers=hdrs)).status_code,
            (await client.put("/v1/widgets/w/status", headers=hdrs)).status_code,
        )
    assert got == TABLE[roles]


async def test_role_table_for_service_accounts(platform: Platform, widgets: str) -> None:
    async with httpx.AsyncClient(base_url=widgets) as client:
        for roles, expected in ((("worker",), (200, 403, 200)), (("admin",), (403, 403, 403))):
            hdrs = headers(platform, *roles, service_account=True)
            got = (
                (await client.get("/v1/widgets", headers=hdrs)).status_code,
                (await client.post("/v1/widgets", json={"name": "w", "size": 1}, headers=hdrs)).status_code,
                (await client.put("/v1/widgets/w/status", headers=hdrs)).status_code,
            )
            assert got == expected, roles


def test_permission_table() -> None:
    p = Permission
    assert permissions_for(["viewer"], False) == {p.READ}
    assert permissions_for(["approver"], False) == {p.READ, p.APPROVALS_WRITE}
    assert permissions_for(["developer"], False) == {
        p.READ,
        p.RUNS_WRITE,
        p.RELEASES_CREATE,
        p.RELEASES_ALIAS,
        p.DEPLOYMENTS_CREATE,
        p.WEBHOOKS_MANAGE,
    }
    assert permissions_for(["admin"], False) == set(p) - {p.INTERNAL_STATUS}
    assert permissions_for(["worker"], True) == {p.READ, p.INTERNAL_STATUS, p.RELEASES_CREATE}
    assert permissions_for(["worker"], False) == set()  # a user cannot become a worker by role
    assert permissions_for(["admin", "developer"], True) == set()  # nor a service account a user
