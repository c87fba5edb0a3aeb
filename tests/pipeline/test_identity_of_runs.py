"""One repository, one commit, one run: repository names compare case-insensitively (GitHub's
do) and an abbreviated SHA names the same commit as the full one. Through the gateway."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from forge_dev.testing import Platform

from .conftest import unique_sha
from .test_runs_api import assert_error, body, dev


def mixed_case_repo() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return f"Forge-Test/Shop-{suffix}", f"forge-test/shop-{suffix}"


async def test_names_differing_only_by_case_are_one_repository(client: httpx.AsyncClient, platform: Platform) -> None:
    first, other = mixed_case_repo()
    headers = dev(platform)
    sha = unique_sha()
    created = await client.post("/v1/runs", json=body(first, sha), headers=headers)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    # The same commit under another spelling is the same run.
    err = assert_error(await client.post("/v1/runs", json=body(other, sha), headers=headers), 409, "resource_conflict")
    assert err["details"]["existing_id"] == run_id

    # A new commit under the other spelling is shown under the name as first given.
    second = await client.post("/v1/runs", json=body(other.upper(), unique_sha()), headers=headers)
    assert second.status_code == 201, second.text
    got = (await client.get(f"/v1/runs/{second.json()['id']}", headers=headers)).json()
    assert got["repository"] == first

    # Listing finds both under any spelling.
    for spelling in (first, other, other.upper()):
        listed = (await client.get("/v1/runs", params={"repository": spelling}, headers=headers)).json()
        assert listed["total"] == 2, (spelling, listed)
        assert {r["repository"] for r in listed["runs"]} == {first}


async def test_the_active_run_limit_counts_every_spelling(client: httpx.AsyncClient, platform: Platform) -> None:
    first, other = mixed_case_repo()
    headers = dev(platform)
    spellings = [first, other, other.upper()]
    responses = await asyncio.gather(
        *(client.post("/v1/runs", json=body(spellings[i % 3], unique_sha()), headers=headers) for i in range(100))
    )
    assert {r.status_code for r in responses} == {201}
    err = assert_error(
        await client.post("/v1/runs", json=body(other, unique_sha()), headers=headers), 429, "limit_exceeded"
    )
    assert err["details"]["active"] == 100


async def test_an_abbreviated_sha_names_the_same_commit(client: httpx.AsyncClient, platform: Platform) -> None:
    _, repo = mixed_case_repo()
    headers = dev(platform)
    full = unique_sha()[:40]
    created = await client.post("/v1/runs", json=body(repo, full), headers=headers)
    assert created.status_code == 201, created.text
    for short in (full[:7], full[:12].upper()):
        err = assert_error(
            await client.post("/v1/runs", json=body(repo, short), headers=headers), 409, "resource_conflict"
        )
        assert err["details"]["existing_id"] == created.json()["id"]
        assert err["details"]["commit_sha"] == full

    # The other way round: a run made for an abbreviated SHA, then the full SHA it abbreviates.
    _, repo2 = mixed_case_repo()
    other = unique_sha()[:40]
    short_run = await client.post("/v1/runs", json=body(repo2, other[:9]), headers=headers)
    assert short_run.status_code == 201, short_run.text
    err = assert_error(
        await client.post("/v1/runs", json=body(repo2, other), headers=headers), 409, "resource_conflict"
    )
    assert err["details"]["existing_id"] == short_run.json()["id"]
    # A different commit sharing no prefix is a run of its own.
    assert (await client.post("/v1/runs", json=body(repo2, unique_sha()[:40]), headers=headers)).status_code == 201
