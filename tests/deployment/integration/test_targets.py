"""Targets through the gateway: pairs the old GitOps layout mapped to one file stay two targets,
and names differing only by case are one target."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployment.support import clone, create_release, deploy, git
from forge_dev.testing import Platform, wait_for_event


async def _deploy_and_wait(gw: httpx.AsyncClient, platform: Platform, release_id: str) -> dict[str, Any]:
    resp = await deploy(gw, platform, release_id, "dev")
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    await wait_for_event(
        platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == body["id"], timeout=30
    )
    return body


async def test_the_colliding_pair_deploys_to_two_files_and_both_stay_active(
    platform: Platform, gw: httpx.AsyncClient, tmp_path: Path
) -> None:
    owner = f"acme{uuid.uuid4().hex[:10]}"
    # environments/dev/{owner}/web-api-gateway/release.yaml for both, in the old layout.
    web = await create_release(gw, platform, f"{owner}/web", "api-gateway")
    web_api = await create_release(gw, platform, f"{owner}/web-api", "gateway")
    first = await _deploy_and_wait(gw, platform, web["id"])
    second = await _deploy_and_wait(gw, platform, web_api["id"])

    viewer = platform.headers("viewer@acme.io", "viewer")
    for repository, project, deployment, release in (
        (f"{owner}/web", "api-gateway", first, web),
        (f"{owner}/web-api", "gateway", second, web_api),
    ):
        current = await gw.get(f"/v1/deployments/dev/{repository}/{project}", headers=viewer)
        assert current.status_code == 200, current.text
        assert (current.json()["deployment_id"], current.json()["status"]) == (deployment["id"], "active")
        assert current.json()["release_id"] == release["id"]

    checkout = clone(platform.env()["FORGE_GITOPS_URL"], tmp_path / "gitops")
    pointers = {
        path: yaml.safe_load((checkout / path).read_text())
        for path in git("ls-files", f"environments/dev/{owner}", cwd=checkout).split()
    }
    assert set(pointers) == {
        f"environments/dev/{owner}/web/api-gateway/release.yaml",
        f"environments/dev/{owner}/web-api/gateway/release.yaml",
    }
    annotations = [p["metadata"]["annotations"] for p in pointers.values()]
    assert {a["forge.dev/deployment-id"] for a in annotations} == {first["id"], second["id"]}
    names = {p["metadata"]["name"] for p in pointers.values()}
    assert len(names) == 2


async def test_names_differing_only_by_case_are_one_target(
    platform: Platform, gw: httpx.AsyncClient, tmp_path: Path
) -> None:
    owner = f"Acme{uuid.uuid4().hex[:10]}"
    first = await create_release(gw, platform, f"{owner}/Shop", "API")
    # Another spelling of the same repository and project: the same release sequence.
    second = await create_release(gw, platform, f"{owner.lower()}/shop", "api")
    assert second["release_number"] == 2
    assert (second["repository"], second["project"]) == (f"{owner}/Shop", "API")
    d1 = await _deploy_and_wait(gw, platform, first["id"])
    d2 = await _deploy_and_wait(gw, platform, second["id"])

    viewer = platform.headers("viewer@acme.io", "viewer")
    for spelling in (f"{owner}/Shop/API", f"{owner.lower()}/shop/api", f"{owner.upper()}/SHOP/Api"):
        current = await gw.get(f"/v1/deployments/dev/{spelling}", headers=viewer)
        assert current.status_code == 200, current.text
        assert current.json()["deployment_id"] == d2["id"]
        page = (await gw.get(f"/v1/deployments/dev/{spelling}/history", headers=viewer)).json()
        assert [(d["id"], d["status"]) for d in page["deployments"]] == [(d2["id"], "active"), (d1["id"], "superseded")]

    checkout = clone(platform.env()["FORGE_GITOPS_URL"], tmp_path / "gitops")
    assert git("ls-files", "environments/dev", cwd=checkout).count(f"/{owner.lower()}/") == 1
    assert (checkout / f"environments/dev/{owner.lower()}/shop/api/release.yaml").exists()
