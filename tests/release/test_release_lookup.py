"""GET /v1/releases/{repo}/{project}/{release-id} and the list: every identifier form, both
encodings of {repo}, ambiguity, pagination."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from ._support import Api, names, release_body, sha


def encoded(repo: str) -> str:
    return repo.replace("/", "%2F")


async def _make(api: Api, repo: str, project: str, commit: str | None = None, **extra: Any) -> dict[str, Any]:
    resp = await api.create(release_body(repo, project, commit, **extra))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.mark.parametrize("style", ["segments", "encoded"])
async def test_every_identifier_form_resolves(developer: Api, viewer: Api, style: str) -> None:
    repo, project = names()
    commit = sha()
    await _make(developer, repo, project)
    target = await _make(developer, repo, project, commit, trigger={"trigger_type": "tag", "tag": "v2.0.0"})
    await _make(developer, repo, project)
    added = await developer.post(
        f"/v1/releases/{repo}/{project}/2/aliases", {"alias": "stable", "alias_type": "custom"}
    )
    assert added.status_code == 201, added.text
    base = f"/v1/releases/{repo if style == 'segments' else encoded(repo)}/{project}"
    expected = (await viewer.get(f"/v1/releases/{target['id']}")).json()
    assert expected["aliases"] == [
        {"alias": "v2.0.0", "alias_type": "tag"},
        {"alias": "stable", "alias_type": "custom"},
        {"alias": "2", "alias_type": "numeric"},
    ]
    for ident in (commit, commit.upper(), commit[:7], commit[:12], "2", "v2.0.0", "stable"):
        resp = await viewer.get(f"{base}/{ident}")
        assert resp.status_code == 200, (ident, resp.text)
        assert resp.json() == expected, ident


async def test_lookup_order_sha_then_number_then_alias(developer: Api, viewer: Api) -> None:
    repo, project = names()
    # A release whose commit starts with the digits of a release number: the SHA wins.
    first = await _make(developer, repo, project, "1234567" + secrets.token_hex(16) + "0")
    second = await _make(developer, repo, project)
    assert (await viewer.get(f"/v1/releases/{repo}/{project}/1234567")).json()["id"] == first["id"]
    # A number that is not a SHA prefix of any release resolves as a number.
    assert (await viewer.get(f"/v1/releases/{repo}/{project}/2")).json()["id"] == second["id"]
    # Hex-looking, unmatched as a SHA, and not a canonical number: not found.
    assert (await viewer.get(f"/v1/releases/{repo}/{project}/0000002")).status_code == 404


async def test_ambiguous_sha_prefix_is_409_listing_candidates(developer: Api, viewer: Api) -> None:
    repo, project = names()
    prefix = secrets.token_hex(4)  # 8 hex characters shared by both commits
    a = await _make(developer, repo, project, prefix + "0" + secrets.token_hex(15) + "0")
    b = await _make(developer, repo, project, prefix + "f" + secrets.token_hex(15) + "0")
    resp = await viewer.get(f"/v1/releases/{repo}/{project}/{prefix}")
    assert resp.status_code == 409
    error = resp.json()["error"]
    assert error["code"] == "resource_conflict"
    assert prefix in error["message"]
    assert {c["id"] for c in error["details"]["candidates"]} == {a["id"], b["id"]}
    assert {c["release_number"] for c in error["details"]["candidates"]} == {1, 2}
    assert all(c["commit_sha"].startswith(prefix) for c in error["details"]["candidates"])
    # One more character disambiguates.
    assert (await viewer.get(f"/v1/releases/{repo}/{project}/{prefix}f")).json()["id"] == b["id"]


async def test_unknown_identifiers_are_404(developer: Api, viewer: Api) -> None:
    repo, project = names()
    await _make(developer, repo, project)
    for ident in (sha(), "abcdef0", "99", "v9.9.9", "no-such-alias"):
        resp = await viewer.get(f"/v1/releases/{repo}/{project}/{ident}")
        assert resp.status_code == 404, ident
        assert resp.json()["error"]["code"] == "resource_not_found"
    other_repo, other_project = names()
    assert (await viewer.get(f"/v1/releases/{other_repo}/{other_project}/1")).status_code == 404


async def test_malformed_paths(viewer: Api) -> None:
    repo, project = names()
    for path in ("/v1/releases/not-a-uuid", f"/v1/releases/{repo}/{project}/1/extra", "/v1/releases/owner%2Fname"):
        resp = await viewer.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"] == "resource_not_found"
    resp = await viewer.get(f"/v1/releases/{encoded('a/b/c')}/{project}")
    assert resp.status_code == 400
    assert resp.json()["error"]["details"]["field"] == "repository"


@pytest.mark.parametrize("style", ["segments", "encoded"])
async def test_list_is_newest_first_with_total_and_paging(developer: Api, viewer: Api, style: str) -> None:
    repo, project = names()
    created = [await _make(developer, repo, project) for _ in range(25)]
    base = f"/v1/releases/{repo if style == 'segments' else encoded(repo)}/{project}"

    page = (await viewer.get(base)).json()
    assert set(page) == {"releases", "total", "limit", "offset", "next_cursor"}
    assert (page["total"], page["limit"], page["offset"]) == (25, 20, 0)
    assert [r["release_number"] for r in page["releases"]] == list(range(25, 5, -1))
    newest = page["releases"][0]
    assert newest == {
        "id": created[-1]["id"],
        "commit_sha": created[-1]["canonical_id"].rsplit("/", 1)[1],
        "release_number": 25,
        "created_at": created[-1]["created_at"],
    }

    page = (await viewer.get(base, limit=10, offset=20)).json()
    assert (page["total"], page["limit"], page["offset"]) == (25, 10, 20)
    assert [r["release_number"] for r in page["releases"]] == [5, 4, 3, 2, 1]

    page = (await viewer.get(base, limit=100, offset=500)).json()
    assert page["releases"] == []
    assert page["total"] == 25

    # Cursor pages: every release once, newest first, next_cursor null on the last page.
    numbers: list[int] = []
    params: dict[str, object] = {"limit": 10}
    while True:
        page = (await viewer.get(base, **params)).json()
        numbers += [r["release_number"] for r in page["releases"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": 10, "cursor": page["next_cursor"]}
    assert numbers == list(range(25, 0, -1))
    other_repo, other_project = names()
    refused = await viewer.get(f"/v1/releases/{other_repo}/{other_project}", cursor=params["cursor"])
    assert refused.status_code == 400
    assert refused.json()["error"]["details"]["field"] == "cursor"


async def test_list_of_unknown_project_is_empty(viewer: Api) -> None:
    repo, project = names()
    page = (await viewer.get(f"/v1/releases/{repo}/{project}")).json()
    assert page == {"releases": [], "total": 0, "limit": 20, "offset": 0, "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "1.5"}, "offset"),
        ({"offset": "5_0"}, "offset"),
        ({"offset": "9" * 30}, "offset"),
        ({"limit": " 5"}, "limit"),
    ],
)
async def test_list_rejects_bad_paging(viewer: Api, params: dict[str, Any], field: str) -> None:
    repo, project = names()
    resp = await viewer.get(f"/v1/releases/{repo}/{project}", **params)
    assert resp.status_code == 400
    assert resp.json()["error"]["details"]["field"] == field


async def test_list_accepts_the_cap(viewer: Api) -> None:
    repo, project = names()
    assert (await viewer.get(f"/v1/releases/{repo}/{project}", limit=100)).json()["limit"] == 100


async def test_odd_inputs_never_make_a_5xx(developer: Api) -> None:
    repo, project = names()
    await _make(developer, repo, project)
    base = f"/v1/releases/{repo}/{project}"
    paths = [
        f"{base}/{'f' * 64}",
        f"{base}/{'9' * 19}",
        f"{base}/{'x' * 300}",
        f"{base}/%ff%fe",
        f"{base}/%E2%82%AC",
        f"{base}/..",
        f"/v1/releases/{repo}/{'p' * 200}",
        f"/v1/releases/{repo}/%00/1",
        "/v1/releases/%2F/x/1",
        "/v1/releases/%2F%2F%2F",
        f"{base}?limit=&offset=",
        f"{base}/1/aliases",
    ]
    for path in paths:
        resp = await developer.get(path)
        assert resp.status_code < 500, (path, resp.status_code, resp.text)
        assert "error" in resp.json() or resp.status_code == 200, path
    bodies: list[object] = [
        None,
        {"alias": None, "alias_type": "tag"},
        {"alias": "x" * 10_000, "alias_type": "tag"},
        {"alias": "ok", "alias_type": ["tag"]},
        ["alias"],
        "alias",
    ]
    for body in bodies:
        resp = await developer.post(f"{base}/1/aliases", body)
        assert resp.status_code == 400, (body, resp.text)
    for alias in ("%ff", "x" * 300, "%2F"):
        resp = await developer.delete(f"{base}/1/aliases/{alias}")
        assert resp.status_code < 500, (alias, resp.text)
    creates: list[object] = [
        {"repository": "a/b", "project": "p", "commit_sha": "a" * 40, "artifacts": [None]},
        {"repository": "a/b", "project": "p", "commit_sha": "a" * 40, "artifacts": [{"name": "n", "type": 1}]},
        {"repository": "a/b", "project": "p" * 500, "commit_sha": "a" * 40},
        {"repository": "\u00e9/b", "project": "p", "commit_sha": "a" * 40},
        {"repository": "a/b", "project": "p", "commit_sha": "a" * 40, "pipeline_run_id": 5},
        {
            "repository": "a/b",
            "project": "p",
            "commit_sha": "a" * 40,
            "trigger": {"trigger_type": "tag", "tag": "\x00"},
        },
    ]
    for body in creates:
        resp = await developer.create(body)  # type: ignore[arg-type]
        assert resp.status_code == 400, (body, resp.text)
