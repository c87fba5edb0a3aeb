"""``GET /v1/runs`` filters and cursors through the gateway."""

from __future__ import annotations

import uuid

import httpx

from .conftest import Lane


def _sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


async def _create(client: httpx.AsyncClient, lane: Lane, repository: str, branch: str, sub: str) -> str:
    # Commits that do not exist in git: the runs are created (and fail in discovery), which is
    # all the list needs.
    resp = await client.post(
        f"{lane.gateway_url}/v1/runs",
        json={"repository": repository, "branch": branch, "commit_sha": _sha(), "trigger_type": "push"},
        headers=lane.headers(sub=sub),
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def test_filters_and_cursor_pages(lane: Lane, client: httpx.AsyncClient) -> None:
    repository = f"filters-{uuid.uuid4().hex[:8]}/shop"
    alice, bob = "alice@acme.io", "bob@acme.io"
    ids = []
    for i in range(7):
        ids.append(
            await _create(client, lane, repository, "main" if i % 2 == 0 else "feature/x", alice if i < 4 else bob)
        )
    newest_first = list(reversed(ids))
    url = f"{lane.gateway_url}/v1/runs"
    viewer = lane.headers("viewer")

    async def page(**params: str) -> dict[str, object]:
        resp = await client.get(url, params={"repository": repository, **params}, headers=viewer)
        assert resp.status_code == 200, resp.text
        body: dict[str, object] = resp.json()
        return body

    # Cursor pages: every run once, newest first, next_cursor null on the last page.
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        body = await page(limit="3", **({"cursor": cursor} if cursor else {}))
        pages += 1
        seen.extend(r["id"] for r in body["runs"])  # type: ignore[attr-defined]
        assert body["total"] == 7
        cursor = body["next_cursor"]  # type: ignore[assignment]
        if cursor is None:
            break
    assert seen == newest_first
    assert pages == 3

    # A run created after the first page does not shift the next one (keyset, not offset).
    first = await page(limit="3")
    await _create(client, lane, repository, "hotfix", "carol@acme.io")
    second = await page(limit="3", cursor=str(first["next_cursor"]))
    assert [r["id"] for r in second["runs"]] == newest_first[3:6]  # type: ignore[attr-defined]

    branch = await page(branch="feature/x")
    assert [r["id"] for r in branch["runs"]] == [ids[5], ids[3], ids[1]]  # type: ignore[attr-defined]
    by_bob = await page(triggered_by=bob)
    assert [r["id"] for r in by_bob["runs"]] == [ids[6], ids[5], ids[4]]  # type: ignore[attr-defined]
    both = await page(triggered_by=alice, branch="main")
    assert [r["id"] for r in both["runs"]] == [ids[2], ids[0]]  # type: ignore[attr-defined]
    future = await page(created_after="2999-01-01T00:00:00Z")
    assert future["runs"] == []
    assert future["next_cursor"] is None
    past = await page(created_before="2000-01-01T00:00:00Z")
    assert past["total"] == 0
    everything = await page(created_after="2000-01-01T00:00:00Z", created_before="2999-01-01T00:00:00Z")
    assert everything["total"] == 8

    # Offsets keep working.
    offset = await page(limit="2", offset="2")
    assert len(offset["runs"]) == 2  # type: ignore[arg-type]


async def test_bad_values_name_the_field(lane: Lane, client: httpx.AsyncClient) -> None:
    repository = f"filters-{uuid.uuid4().hex[:8]}/shop"
    await _create(client, lane, repository, "main", "carol@acme.io")
    first = await client.get(
        f"{lane.gateway_url}/v1/runs", params={"repository": repository, "limit": "1"}, headers=lane.headers("viewer")
    )
    token = first.json()["next_cursor"]
    cases = [
        ({"status": "exploded"}, "status"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-01-01T00:00:00"}, "created_before"),
        ({"triggered_by": ""}, "triggered_by"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
        ({"cursor": "%%%"}, "cursor"),
        ({"branch": "a..b"}, "branch"),
    ]
    if token is not None:
        cases.append(({"cursor": token, "status": "failed"}, "cursor"))  # another filter: another list
        cases.append(({"cursor": token, "offset": "5"}, "cursor"))
    for params, field in cases:
        resp = await client.get(
            f"{lane.gateway_url}/v1/runs", params={"repository": repository, **params}, headers=lane.headers("viewer")
        )
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["error"]["details"]["field"] == field, (params, resp.text)


async def test_totals_follow_status_changes(lane: Lane, client: httpx.AsyncClient) -> None:
    repository = f"totals-{uuid.uuid4().hex[:8]}/shop"
    ids = [await _create(client, lane, repository, "main", "dora@acme.io") for _ in range(3)]
    # The commits do not exist: each run fails in discovery. Wait for each to end.
    for run_id in ids:
        async with client.stream(
            "GET", f"{lane.gateway_url}/v1/runs/{run_id}/events", headers=lane.headers("viewer")
        ) as resp:
            async for _ in resp.aiter_lines():
                pass
    url = f"{lane.gateway_url}/v1/runs"

    async def total(**params: str) -> int:
        resp = await client.get(url, params={"repository": repository, **params}, headers=lane.headers("viewer"))
        assert resp.status_code == 200, resp.text
        return int(resp.json()["total"])

    assert await total() == 3
    assert await total(status="failed") == 3
    assert await total(status="pending") == 0
    assert await total(status="running") == 0
    assert await total(branch="main") == 3  # counted from the rows: the same answer
