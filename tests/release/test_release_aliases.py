"""Alias rules: tags and numbers never move, branch aliases follow the newest release of the
branch, custom aliases are added and removed by hand; both {repo} encodings."""

from __future__ import annotations

from typing import Any

import pytest

from ._support import Api, names, release_body


async def _make(api: Api, repo: str, project: str, **extra: Any) -> dict[str, Any]:
    resp = await api.create(release_body(repo, project, **extra))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _aliases(api: Api, release_id: str) -> list[dict[str, str]]:
    return list((await api.get(f"/v1/releases/{release_id}")).json()["aliases"])


@pytest.mark.parametrize("style", ["segments", "encoded"])
async def test_add_and_remove_custom_alias(developer: Api, style: str) -> None:
    repo, project = names()
    r1 = await _make(developer, repo, project)
    r2 = await _make(developer, repo, project)
    base = f"/v1/releases/{repo if style == 'segments' else repo.replace('/', '%2F')}/{project}"

    resp = await developer.post(f"{base}/1/aliases", {"alias": "candidate", "alias_type": "custom"})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {
        "alias": "candidate",
        "alias_type": "custom",
        "release_id": r1["id"],
        "release_number": 1,
        "moved_from": None,
    }
    # Idempotent on the same release; a conflict on another one (custom aliases don't move).
    assert (
        await developer.post(f"{base}/1/aliases", {"alias": "candidate", "alias_type": "custom"})
    ).status_code == 200
    conflict = await developer.post(f"{base}/2/aliases", {"alias": "candidate", "alias_type": "custom"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["details"]["release_id"] == r1["id"]
    assert (await developer.get(f"{base}/candidate")).json()["id"] == r1["id"]

    # Removing it from a release that doesn't carry it is a 404; from its release a 204.
    assert (await developer.delete(f"{base}/2/aliases/candidate")).status_code == 404
    resp = await developer.delete(f"{base}/1/aliases/candidate")
    assert resp.status_code == 204
    assert resp.content == b""
    assert (await developer.get(f"{base}/candidate")).status_code == 404
    # Now it can name release 2.
    assert (
        await developer.post(f"{base}/2/aliases", {"alias": "candidate", "alias_type": "custom"})
    ).status_code == 201
    assert (await developer.get(f"{base}/candidate")).json()["id"] == r2["id"]


async def test_tags_never_move_and_are_permanent(developer: Api) -> None:
    repo, project = names()
    r1 = await _make(developer, repo, project)
    await _make(developer, repo, project)
    base = f"/v1/releases/{repo}/{project}"
    assert (await developer.post(f"{base}/1/aliases", {"alias": "v1.0.0", "alias_type": "tag"})).status_code == 201
    moved = await developer.post(f"{base}/2/aliases", {"alias": "v1.0.0", "alias_type": "tag"})
    assert moved.status_code == 409
    assert moved.json()["error"]["details"] == {
        "alias": "v1.0.0",
        "alias_type": "tag",
        "release_id": r1["id"],
        "release_number": 1,
    }
    # Not as a branch or custom alias either, and not removable.
    assert (await developer.post(f"{base}/2/aliases", {"alias": "v1.0.0", "alias_type": "branch"})).status_code == 409
    assert (await developer.post(f"{base}/1/aliases", {"alias": "v1.0.0", "alias_type": "custom"})).status_code == 409
    assert (await developer.delete(f"{base}/1/aliases/v1.0.0")).status_code == 409
    assert (await developer.get(f"{base}/v1.0.0")).json()["id"] == r1["id"]


async def test_numeric_aliases_are_permanent(developer: Api) -> None:
    repo, project = names()
    await _make(developer, repo, project)
    base = f"/v1/releases/{repo}/{project}"
    resp = await developer.delete(f"{base}/1/aliases/1")
    assert resp.status_code == 409
    assert resp.json()["error"]["details"]["alias_type"] == "numeric"
    numeric = await developer.post(f"{base}/1/aliases", {"alias": "latest", "alias_type": "numeric"})
    assert numeric.status_code == 400
    assert numeric.json()["error"]["details"]["field"] == "alias_type"


async def test_tag_trigger_adds_a_tag_alias_and_a_second_release_cannot_take_it(developer: Api) -> None:
    repo, project = names()
    r1 = await _make(developer, repo, project, trigger={"trigger_type": "tag", "tag": "v3.1.0"})
    assert {"alias": "v3.1.0", "alias_type": "tag"} in await _aliases(developer, r1["id"])
    again = await developer.create(release_body(repo, project, trigger={"trigger_type": "tag", "tag": "v3.1.0"}))
    assert again.status_code == 409
    assert again.json()["error"]["details"]["release_id"] == r1["id"]
    assert "existing_id" not in again.json()["error"]["details"]  # that key means "same commit"
    # Refused: no number used.
    assert (await _make(developer, repo, project))["release_number"] == 2


async def test_branch_alias_follows_the_newest_release_of_the_branch(developer: Api) -> None:
    repo, project = names()
    base = f"/v1/releases/{repo}/{project}"
    main = {"trigger_type": "branch_push", "branch": "main"}
    r1 = await _make(developer, repo, project, trigger=main)
    assert (await developer.get(f"{base}/main")).json()["id"] == r1["id"]
    r2 = await _make(developer, repo, project, trigger=main)
    assert (await developer.get(f"{base}/main")).json()["id"] == r2["id"]
    assert {"alias": "main", "alias_type": "branch"} not in await _aliases(developer, r1["id"])
    # A release of another branch leaves it alone.
    await _make(developer, repo, project, trigger={"trigger_type": "branch_push", "branch": "develop"})
    assert (await developer.get(f"{base}/main")).json()["id"] == r2["id"]
    # By hand: never back to an older release ...
    back = await developer.post(f"{base}/1/aliases", {"alias": "main", "alias_type": "branch"})
    assert back.status_code == 409
    assert back.json()["error"]["details"]["release_number"] == 2
    # ... but forward to a newer one.
    r4 = await _make(developer, repo, project)
    moved = await developer.post(f"{base}/4/aliases", {"alias": "main", "alias_type": "branch"})
    assert moved.status_code == 201, moved.text
    assert moved.json()["moved_from"] == r2["id"]
    assert (await developer.get(f"{base}/main")).json()["id"] == r4["id"]
    # Branch aliases can be removed.
    assert (await developer.delete(f"{base}/4/aliases/main")).status_code == 204
    assert (await developer.get(f"{base}/main")).status_code == 404


async def test_alias_with_a_slash_is_percent_encoded_in_paths(developer: Api) -> None:
    repo, project = names()
    r1 = await _make(developer, repo, project, trigger={"trigger_type": "branch_push", "branch": "feature/login"})
    base = f"/v1/releases/{repo}/{project}"
    assert (await developer.get(f"{base}/feature%2Flogin")).json()["id"] == r1["id"]
    assert (await developer.get(f"/v1/releases/{repo.replace('/', '%2F')}/{project}/feature%2Flogin")).json()[
        "id"
    ] == r1["id"]
    assert (await developer.delete(f"{base}/1/aliases/feature%2Flogin")).status_code == 204
    assert (await developer.get(f"{base}/feature%2Flogin")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"alias": "42", "alias_type": "custom"}, "alias"),
        ({"alias": "deadbeef", "alias_type": "tag"}, "alias"),
        ({"alias": "", "alias_type": "tag"}, "alias"),
        ({"alias": "has space", "alias_type": "tag"}, "alias"),
        ({"alias": "a..b", "alias_type": "tag"}, "alias"),
        ({"alias": "ok", "alias_type": "label"}, "alias_type"),
        ({"alias_type": "tag"}, "alias"),
        ({"alias": "ok"}, "alias_type"),
    ],
)
async def test_invalid_alias_is_400(developer: Api, body: dict[str, Any], field: str) -> None:
    repo, project = names()
    await _make(developer, repo, project)
    resp = await developer.post(f"/v1/releases/{repo}/{project}/1/aliases", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["details"]["field"] == field


async def test_alias_on_unknown_release_is_404(developer: Api) -> None:
    repo, project = names()
    body = {"alias": "x", "alias_type": "custom"}
    assert (await developer.post(f"/v1/releases/{repo}/{project}/1/aliases", body)).status_code == 404
    await _make(developer, repo, project)
    assert (await developer.post(f"/v1/releases/{repo}/{project}/7/aliases", body)).status_code == 404
    assert (await developer.post(f"/v1/releases/{repo}/{project}/1", body)).status_code == 404


async def test_viewers_cannot_change_aliases(developer: Api, viewer: Api) -> None:
    repo, project = names()
    await _make(developer, repo, project)
    base = f"/v1/releases/{repo}/{project}/1/aliases"
    assert (await viewer.post(base, {"alias": "x", "alias_type": "custom"})).status_code == 403
    assert (await viewer.delete(f"{base}/x")).status_code == 403
