"""Who and what a release is about, through the gateway: repository and project names are
case-insensitive (shown as first given), creators and triggers carry stable identities, and a
pipeline_run_id must name a successful run of the same repository and commit."""

from __future__ import annotations

import uuid

import httpx
import pytest

from forge_dev.testing import Platform

from ._support import Api, finished_run, names, release_body, sha


async def test_names_differing_only_by_case_are_one_repository_shown_as_first_given(
    developer: Api, viewer: Api
) -> None:
    repo, project = names()
    first_repo, first_project = repo.replace("acme", "Acme"), project.upper()
    first = await developer.create(
        release_body(first_repo, first_project, trigger={"trigger_type": "tag", "tag": "v1.0"})
    )
    assert first.status_code == 201, first.text

    # Another spelling: the same release sequence, the same OCI repository, the first spelling.
    second = await developer.create(release_body(repo.upper(), project))
    assert second.status_code == 201, second.text
    assert second.json()["release_number"] == 2
    assert second.json()["canonical_id"].startswith(f"{first_repo}/{first_project}/")
    assert second.json()["oci_uri"].rsplit(":", 1)[0] == first.json()["oci_uri"].rsplit(":", 1)[0]

    # One commit, one release, whatever the spelling; one tag namespace too.
    commit = (await viewer.get(f"/v1/releases/{first.json()['id']}")).json()["commit_sha"]
    again = await developer.create(release_body(repo, project.lower(), commit))
    assert again.status_code == 409, again.text
    assert again.json()["error"]["details"]["existing_id"] == first.json()["id"]
    tag = await developer.create(release_body(repo, project, trigger={"trigger_type": "tag", "tag": "v1.0"}))
    assert tag.status_code == 409, tag.text

    for spelling in (repo, repo.upper(), first_repo):
        listing = await viewer.get(f"/v1/releases/{spelling}/{project.lower()}")
        assert listing.status_code == 200, listing.text
        assert listing.json()["total"] == 2
        got = (await viewer.get(f"/v1/releases/{spelling}/{project}/v1.0")).json()
        assert (got["id"], got["repository"], got["project"]) == (first.json()["id"], first_repo, first_project)
    shown = (await viewer.get(f"/v1/releases/{second.json()['id']}")).json()
    assert (shown["repository"], shown["project"]) == (first_repo, first_project)


async def test_a_worker_records_the_run_authors_stable_identity(worker: Api, viewer: Api) -> None:
    repo, project = names()
    trigger = {
        "trigger_type": "branch_push",
        "branch": "main",
        "triggered_by": "octocat",
        "triggered_by_id": "github:583231",
    }
    resp = await worker.create(release_body(repo, project, trigger=trigger))
    assert resp.status_code == 201, resp.text
    got = (await viewer.get(f"/v1/releases/{resp.json()['id']}")).json()
    assert got["trigger"]["triggered_by"] == "octocat"
    assert got["triggered_by_id"] == "github:583231"
    assert got["created_by_id"].startswith("sub:worker-")


@pytest.mark.parametrize("bad", ["octocat", "github:octocat", "sub:", "uid:1", "sub:a b"])
async def test_a_malformed_stable_identity_is_refused(worker: Api, viewer: Api, bad: str) -> None:
    repo, project = names()
    trigger = {"trigger_type": "manual", "triggered_by": "octocat", "triggered_by_id": bad}
    resp = await worker.create(release_body(repo, project, trigger=trigger))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["details"]["field"] == "trigger.triggered_by_id"
    assert (await viewer.get(f"/v1/releases/{repo}/{project}")).json()["total"] == 0


async def test_users_cannot_claim_another_trigger_identity(developer: Api, viewer: Api) -> None:
    repo, project = names()
    trigger = {"trigger_type": "manual", "triggered_by": "octocat", "triggered_by_id": "github:583231"}
    resp = await developer.create(release_body(repo, project, trigger=trigger))
    assert resp.status_code == 201, resp.text
    got = (await viewer.get(f"/v1/releases/{resp.json()['id']}")).json()
    assert got["triggered_by_id"] == got["created_by_id"] == f"sub:{developer.identity}"


async def test_pipeline_run_id_must_name_a_successful_run_of_the_same_repository_and_commit(
    platform: Platform, http: httpx.AsyncClient, base_url: str, worker: Api, viewer: Api
) -> None:
    repo, project = names()
    commit = sha()
    succeeded = await finished_run(http, base_url, platform, repo, commit)
    other_commit = sha()
    cancelled = await finished_run(http, base_url, platform, repo, other_commit, status="cancelled")

    refused = {
        "unknown run": release_body(repo, project, commit, pipeline_run_id=str(uuid.uuid4())),
        "other commit": release_body(repo, project, sha(), pipeline_run_id=succeeded),
        "other repository": release_body(names()[0], project, commit, pipeline_run_id=succeeded),
        "run did not succeed": release_body(repo, project, other_commit, pipeline_run_id=cancelled),
    }
    for case, body in refused.items():
        resp = await worker.create(body)
        assert resp.status_code == 400, (case, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_request", case
        assert error["details"]["field"] == "pipeline_run_id", case
    assert "has not succeeded (status cancelled)" in (await worker.create(refused["run did not succeed"])).text
    assert (await viewer.get(f"/v1/releases/{repo}/{project}")).json()["total"] == 0

    # The run's repository in another case is the same repository.
    created = await worker.create(release_body(repo.upper(), project, commit, pipeline_run_id=succeeded))
    assert created.status_code == 201, created.text
    assert (await viewer.get(f"/v1/releases/{created.json()['id']}")).json()["pipeline_run_id"] == succeeded
