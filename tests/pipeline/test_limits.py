"""At most 100 pending+running runs per repository, also under concurrent creates."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from forge_dev.testing import Platform

from .conftest import unique_repo, unique_sha
from .test_runs_api import assert_error, body, dev


async def test_150_concurrent_creates_leave_exactly_100(client: httpx.AsyncClient, platform: Platform) -> None:
    repo = unique_repo()
    headers = dev(platform)
    responses = await asyncio.gather(
        *(client.post("/v1/runs", json=body(repo, unique_sha()), headers=headers) for _ in range(150))
    )
    counts = Counter(r.status_code for r in responses)
    assert counts == {201: 100, 429: 50}, counts
    err = assert_error(next(r for r in responses if r.status_code == 429), 429, "limit_exceeded")
    assert err["details"] == {"repository": repo, "limit": 100, "active": 100}
    listed = (await client.get("/v1/runs", params={"repository": repo}, headers=headers)).json()
    assert listed["total"] == 100

    # Another repository is not affected; a finished run frees a slot.
    assert (await client.post("/v1/runs", json=body(), headers=headers)).status_code == 201
    victim = next(r.json()["id"] for r in responses if r.status_code == 201)
    assert (await client.delete(f"/v1/runs/{victim}", headers=headers)).status_code == 204
    assert (await client.post("/v1/runs", json=body(repo, unique_sha()), headers=headers)).status_code == 201
    assert_error(await client.post("/v1/runs", json=body(repo, unique_sha()), headers=headers), 429, "limit_exceeded")
