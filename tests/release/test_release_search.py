"""``GET /v1/releases/search`` through the gateway: releases by commit prefix, branch, tag,
alias or author, newest first, paged by cursor (docs/api-search.md)."""

from __future__ import annotations

import uuid
from typing import Any

from ._support import Api, names, release_body, sha


async def _make(api: Api, repo: str, project: str, **extra: Any) -> dict[str, Any]:
    resp = await api.create(release_body(repo, project, **extra))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _found(api: Api, q: str, **params: str) -> list[tuple[str, list[str]]]:
    resp = await api.get("/v1/releases/search", q=q, **params)
    assert resp.status_code == 200, resp.text
    return [(hit["id"], hit["matched"]) for hit in resp.json()["results"]]


async def test_releases_found_by_commit_branch_tag_alias_and_author(developer: Api, viewer: Api) -> None:
    repo, project = names()
    branch = f"feature/search-{uuid.uuid4().hex[:8]}"
    tag = f"v9.{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000}-{uuid.uuid4().hex[:6]}"
    commit = sha()
    on_branch = await _make(
        developer, repo, project, commit=commit, trigger={"trigger_type": "branch_push", "branch": branch}
    )
    tagged = await _make(developer, repo, project, trigger={"trigger_type": "tag", "tag": tag})
    alias = f"candidate-{uuid.uuid4().hex[:8]}"
    added = await developer.post(f"/v1/releases/{repo}/{project}/2/aliases", {"alias": alias, "alias_type": "custom"})
    assert added.status_code == 201, added.text

    assert await _found(viewer, commit[:10]) == [(on_branch["id"], ["commit"])]
    assert await _found(viewer, commit.upper()) == [(on_branch["id"], ["commit"])]
    assert await _found(viewer, branch) == [(on_branch["id"], ["alias", "branch"])]  # its branch alias too
    assert await _found(viewer, tag) == [(tagged["id"], ["alias", "tag"])]
    assert await _found(viewer, alias) == [(tagged["id"], ["alias"])]
    # The developer made both: newest first, one per page.
    first = await viewer.get("/v1/releases/search", q=developer.identity, repository=repo, limit="1")
    body = first.json()
    assert [(h["id"], h["matched"]) for h in body["results"]] == [(tagged["id"], ["author"])]
    second = await viewer.get(
        "/v1/releases/search", q=developer.identity, repository=repo, limit="1", cursor=body["next_cursor"]
    )
    assert [h["id"] for h in second.json()["results"]] == [on_branch["id"]]
    assert second.json()["next_cursor"] is None
    hit = (await viewer.get("/v1/releases/search", q=alias)).json()["results"][0]
    assert (hit["repository"], hit["project"], hit["release_number"], hit["tag"]) == (repo, project, 2, tag)
    assert alias in hit["aliases"]
    assert (await viewer.get(hit["url"])).json()["id"] == tagged["id"]
    # Another repository's filter hides them.
    assert await _found(viewer, commit[:10], repository="someone/else") == []


async def test_bad_release_searches_are_refused(viewer: Api) -> None:
    for params, field in [
        ({}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "main", "limit": "0"}, "limit"),
        ({"q": "main", "repository": "not a repository"}, "repository"),
        ({"q": "main", "cursor": "zzz"}, "cursor"),
    ]:
        resp = await viewer.get("/v1/releases/search", **params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["error"]["details"]["field"] == field
