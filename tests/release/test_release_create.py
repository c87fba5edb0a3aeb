"""POST /v1/releases: the created shape, numbering, duplicates, invalid inputs, roles, event."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform, read_events, wait_for_event

from ._support import Api, artifact, finished_run, names, release_body, sha


def _ts(value: str) -> dt.datetime:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_create_returns_the_spec_shape(developer: Api) -> None:
    repo, project = names()
    commit = sha()
    before = dt.datetime.now(dt.UTC)
    resp = await developer.create(release_body(repo, project, commit))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    # The spec's fields, plus oci_digest (the manifest digest, also in Get Release).
    assert set(body) == {"id", "release_number", "oci_uri", "canonical_id", "created_at", "oci_digest"}
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["release_number"] == 1
    assert body["canonical_id"] == f"{repo}/{project}/{commit}"
    assert body["oci_uri"].endswith(f"{repo.lower()}/{project.lower()}:{commit}")
    assert body["oci_digest"].startswith("sha256:")
    assert len(body["oci_digest"]) == 71
    assert before - dt.timedelta(seconds=5) <= _ts(body["created_at"]) <= dt.datetime.now(dt.UTC)


async def test_get_by_uuid_returns_every_field_of_the_spec(developer: Api) -> None:
    repo, project = names()
    commit = sha()
    arts = [artifact("api-image", "container"), artifact("cli", "binary"), artifact("docs", "archive")]
    arts[2]["primary_published_uri"] = "https://downloads.example.com/docs-1.0.tar.gz"
    created = (await developer.create(release_body(repo, project, commit.upper(), artifacts=arts))).json()

    resp = await developer.get(f"/v1/releases/{created['id']}")
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got == {
        "id": created["id"],
        "repository": repo,
        "project": project,
        "commit_sha": commit,  # normalised to lower case
        "release_number": 1,
        "oci_uri": created["oci_uri"],
        "oci_digest": created["oci_digest"],
        "created_at": created["created_at"],
        "created_by": developer.identity,
        "created_by_id": f"sub:{developer.identity}",  # the token's subject: a stable identity
        "triggered_by_id": f"sub:{developer.identity}",
        "pipeline_run_id": None,
        "artifacts": [{**a, "digest": None, "size": None} for a in arts],
        "aliases": [{"alias": "1", "alias_type": "numeric"}],
        "trigger": {"trigger_type": "manual", "branch": None, "tag": None, "triggered_by": developer.identity},
    }


async def test_unknown_uuid_is_404(developer: Api) -> None:
    resp = await developer.get(f"/v1/releases/{uuid.uuid4()}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "resource_not_found"


async def test_numbers_are_sequential_per_project(developer: Api) -> None:
    repo, project = names()
    other_repo, other_project = names()
    numbers = [(await developer.create(release_body(repo, project))).json()["release_number"] for _ in range(3)]
    assert numbers == [1, 2, 3]
    # Another project of the same repository and another repository count on their own.
    assert (await developer.create(release_body(repo, other_project))).json()["release_number"] == 1
    assert (await developer.create(release_body(other_repo, project))).json()["release_number"] == 1


async def test_fifty_concurrent_creates_get_numbers_1_to_50(developer: Api, platform: Platform) -> None:
    repo, project = names()
    commits = [sha() for _ in range(50)]
    responses = await asyncio.gather(*(developer.create(release_body(repo, project, c)) for c in commits))
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses if r.status_code != 201]
    numbers = sorted(r.json()["release_number"] for r in responses)
    assert numbers == list(range(1, 51))
    listing = (await developer.get(f"/v1/releases/{repo}/{project}", limit=100)).json()
    assert listing["total"] == 50
    assert [r["release_number"] for r in listing["releases"]] == list(range(50, 0, -1))
    by_commit = {r["commit_sha"]: r["release_number"] for r in listing["releases"]}
    assert by_commit == {c: r.json()["release_number"] for c, r in zip(commits, responses, strict=True)}
    assert "deadlock" not in platform.logs("release").lower()


async def test_duplicate_commit_is_409_with_the_existing_id_and_uses_no_number(developer: Api) -> None:
    repo, project = names()
    commit = sha()
    first = (await developer.create(release_body(repo, project, commit))).json()
    again = await developer.create(release_body(repo, project, commit))
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "resource_conflict"
    assert error["details"]["existing_id"] == first["id"]
    assert error["details"]["release_number"] == 1
    # The same commit in upper case is the same commit.
    assert (await developer.create(release_body(repo, project, commit.upper()))).status_code == 409
    # No gap: the refused creates consumed no number.
    assert (await developer.create(release_body(repo, project))).json()["release_number"] == 2


async def test_concurrent_duplicates_create_exactly_one_release(developer: Api) -> None:
    repo, project = names()
    commit = sha()
    responses = await asyncio.gather(*(developer.create(release_body(repo, project, commit)) for _ in range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 9
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert {r.json()["error"]["details"]["existing_id"] for r in responses if r.status_code == 409} == {winner["id"]}


def _with(**changes: Any) -> dict[str, Any]:
    repo, project = names()
    body = release_body(repo, project)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()
_GOOD_ART = artifact()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_with(repository=_DROP), "repository"),
        (_with(project=_DROP), "project"),
        (_with(commit_sha=_DROP), "commit_sha"),
        (_with(repository="no-slash"), "repository"),
        (_with(repository="a/b/c"), "repository"),
        (_with(repository="owner/na me"), "repository"),
        (_with(repository=42), "repository"),
        (_with(project=""), "project"),
        (_with(project="bad/project"), "project"),
        (_with(project="-leading-dash"), "project"),
        (_with(commit_sha="abc1234"), "commit_sha"),
        (_with(commit_sha="g" * 40), "commit_sha"),
        (_with(commit_sha="a" * 41), "commit_sha"),
        (_with(pipeline_run_id="not-a-uuid"), "pipeline_run_id"),
        (_with(artifacts="nope"), "artifacts"),
        (_with(artifacts=[{**_GOOD_ART, "type": "docker"}]), "artifacts[0].type"),
        (_with(artifacts=[{k: v for k, v in _GOOD_ART.items() if k != "name"}]), "artifacts[0].name"),
        (_with(artifacts=[{**_GOOD_ART, "name": "bad name"}]), "artifacts[0].name"),
        (_with(artifacts=[_GOOD_ART, {**_GOOD_ART}]), "artifacts[1].name"),
        (_with(artifacts=[{**_GOOD_ART, "tracking_oci_uri": "nginx:latest"}]), "artifacts[0].tracking_oci_uri"),
        (_with(artifacts=[{**_GOOD_ART, "tracking_oci_uri": ""}]), "artifacts[0].tracking_oci_uri"),
        (_with(artifacts=[{**_GOOD_ART, "primary_published_uri": "not a uri"}]), "artifacts[0].primary_published_uri"),
        (_with(artifacts=[{**_GOOD_ART, "digest": "md5:abc"}]), "artifacts[0].digest"),
        (_with(artifacts=[{**_GOOD_ART, "size": -1}]), "artifacts[0].size"),
        (_with(artifacts=[{**_GOOD_ART, "primary_published_uri": "ftp://x/y"}]), "artifacts[0].primary_published_uri"),
        (_with(trigger={"trigger_type": "cron"}), "trigger.trigger_type"),
        (_with(trigger={"trigger_type": "branch_push"}), "trigger.branch"),
        (_with(trigger={"trigger_type": "tag"}), "trigger.tag"),
        (_with(trigger={"trigger_type": "branch_push", "branch": "bad..ref"}), "trigger.branch"),
        (_with(trigger="manual"), "trigger"),
    ],
)
async def test_invalid_create_is_400_naming_the_field(developer: Api, body: dict[str, Any], field: str) -> None:
    resp = await developer.create(body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]["field"] == field
    assert error["message"]


async def test_non_json_body_is_400(developer: Api) -> None:
    for content in (b"", b"{not json", b"[]"):
        resp = await developer.http.post(
            f"{developer.base}/v1/releases",
            content=content,
            headers={**developer.headers, "Content-Type": "application/json"},
        )
        assert resp.status_code == 400, (content, resp.text)
        assert resp.json()["error"]["code"] == "invalid_request"


async def test_invalid_create_leaves_nothing_behind(developer: Api) -> None:
    repo, project = names()
    bad = release_body(repo, project, artifacts=[{**_GOOD_ART, "type": "docker"}])
    assert (await developer.create(bad)).status_code == 400
    listing = (await developer.get(f"/v1/releases/{repo}/{project}")).json()
    assert listing["total"] == 0
    assert (await developer.create(release_body(repo, project))).json()["release_number"] == 1


async def test_roles(platform: Platform, developer: Api, viewer: Api, worker: Api) -> None:
    repo, project = names()
    resp = await viewer.create(release_body(repo, project))
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "authorization_failed"
    approver = Api(developer.http, developer.base, platform.headers("appr@example.com", "approver"))
    assert (await approver.create(release_body(repo, project))).status_code == 403
    anonymous = await developer.http.post(f"{developer.base}/v1/releases", json=release_body(repo, project))
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "authentication_failed"
    admin = Api(developer.http, developer.base, platform.headers("root@example.com", "admin"))
    assert (await admin.create(release_body(repo, project))).status_code == 201
    # Nothing was created by the refused calls: the admin's release is number 1.
    assert (await viewer.get(f"/v1/releases/{repo}/{project}")).json()["total"] == 1
    # Viewers read.
    listing = await viewer.get(f"/v1/releases/{repo}/{project}")
    assert listing.status_code == 200


async def test_worker_creates_with_run_and_trigger(
    platform: Platform, http: httpx.AsyncClient, base_url: str, worker: Api, viewer: Api
) -> None:
    repo, project = names()
    commit = sha()
    run_id = await finished_run(http, base_url, platform, repo, commit)
    body = release_body(
        repo, project, commit, pipeline_run_id=run_id, trigger={"trigger_type": "branch_push", "branch": "main"}
    )
    resp = await worker.create(body)
    assert resp.status_code == 201, resp.text
    got = (await viewer.get(f"/v1/releases/{resp.json()['id']}")).json()
    assert got["pipeline_run_id"] == run_id
    assert got["created_by"] == worker.identity
    assert got["trigger"] == {
        "trigger_type": "branch_push",
        "branch": "main",
        "tag": None,
        "triggered_by": worker.identity,
    }
    assert got["created_by_id"].startswith("sub:worker-")
    assert got["triggered_by_id"] == got["created_by_id"]
    assert {"alias": "main", "alias_type": "branch"} in got["aliases"]
    # Workers create releases but do not manage aliases.
    alias = await worker.post(f"/v1/releases/{repo}/{project}/1/aliases", {"alias": "x", "alias_type": "custom"})
    assert alias.status_code == 403


async def test_release_created_event_payload(platform: Platform, developer: Api) -> None:
    repo, project = names()
    commit = sha()
    body = release_body(repo, project, commit, trigger={"trigger_type": "tag", "tag": "v1.0.0"})
    created = (await developer.create(body)).json()
    event = await wait_for_event(platform, "release.created", lambda e: e["data"]["release_id"] == created["id"])
    assert event["event_type"] == "release.created"
    assert str(uuid.UUID(event["event_id"])) == event["event_id"]
    assert _ts(event["timestamp"]) >= _ts(created["created_at"]) - dt.timedelta(seconds=1)
    assert event["data"] == {
        "release_id": created["id"],
        "repository": repo,
        "project": project,
        "commit_sha": commit,
        "release_number": 1,
        "trigger_type": "tag",
    }
    # Exactly once, and none for a refused duplicate.
    assert (await developer.create(body)).status_code == 409
    matching = await read_events(platform, "release.created", lambda e: e["data"]["repository"] == repo)
    assert len(matching) == 1


async def test_openapi_documents_the_contract(platform: Platform, developer: Api) -> None:
    resp = await developer.http.get(f"{platform.service_url('release')}/schema/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    create = doc["paths"]["/v1/releases"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["repository", "project", "commit_sha"]
    assert set(body["properties"]) == {"repository", "project", "commit_sha", "pipeline_run_id", "artifacts", "trigger"}
    assert "201" in create["responses"]
    release = doc["components"]["schemas"]["Release"]
    assert {"id", "oci_digest", "artifacts", "aliases", "trigger"} <= set(release["properties"])
    assert set(doc["paths"]["/v1/releases/{rest}"]) == {"get", "post", "delete"}


async def test_worker_records_who_triggered_the_run(worker: Api, developer: Api, viewer: Api) -> None:
    """A release made by a worker's release job is attributed to the run's author, so that
    person cannot approve it (separation of duties); a user cannot claim someone else did it."""
    repo, project = names()
    body = release_body(
        repo, project, trigger={"trigger_type": "branch_push", "branch": "main", "triggered_by": "dana@example.com"}
    )
    resp = await worker.create(body)
    assert resp.status_code == 201, resp.text
    got = (await viewer.get(f"/v1/releases/{resp.json()['id']}")).json()
    assert got["created_by"] == worker.identity
    assert got["trigger"]["triggered_by"] == "dana@example.com"

    repo2, project2 = names()
    body = release_body(repo2, project2, trigger={"trigger_type": "manual", "triggered_by": "someone-else@example.com"})
    resp = await developer.create(body)
    assert resp.status_code == 201, resp.text
    got = (await viewer.get(f"/v1/releases/{resp.json()['id']}")).json()
    assert got["trigger"]["triggered_by"] == developer.identity


async def test_artifact_digests_are_kept_and_the_manifest_names_them(developer: Api, platform: Platform) -> None:
    repo, project = names()
    digest = "sha256:" + "ab" * 32
    art = {**artifact("api", "container"), "digest": digest, "size": 1234}
    created = (await developer.create(release_body(repo, project, artifacts=[art]))).json()
    resp = await developer.get(f"/v1/releases/{created['id']}")
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["artifacts"] == [art]
    layout = platform.data_dir / "oci" / repo.lower() / project.lower()
    manifest = json.loads((layout / "blobs" / "sha256" / got["oci_digest"].removeprefix("sha256:")).read_bytes())
    tracked = art["tracking_oci_uri"].rsplit(":", 1)[0]
    assert manifest["annotations"]["dev.forge.artifact.api"] == f"{tracked}@{digest}"
