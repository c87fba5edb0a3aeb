"""Expiry at the boundary, against an approval instance with FORGE_APPROVAL_TTL=2s."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import httpx
import pytest

from forge_common.events import isoformat
from forge_dev.testing import Platform

from .conftest import CreateRelease, unique_user

pytestmark = pytest.mark.asyncio(loop_scope="session")

TTL = dt.timedelta(seconds=2)


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


async def test_an_approval_expires_the_instant_expires_at_passes(
    platform: Platform,
    http: httpx.AsyncClient,
    api_url: Callable[[str], str],
    short_ttl_approval_url: str,
    create_release: CreateRelease,
) -> None:
    base = api_url("approval")
    release = await create_release()
    rid = release["id"]
    approver = platform.headers(unique_user("approver"), "approver")
    payload = {"release_id": rid, "environment": "production", "justification": "hotfix window"}

    # The short-TTL instance writes the approval; every instance computes status at read time.
    resp = await http.post(f"{short_ttl_approval_url}/v1/approvals", json=payload, headers=approver)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    aid = created["approval_id"]
    expires_at = ts(created["expires_at"])
    assert expires_at - ts(created["approved_at"]) == TTL

    reader = platform.headers(unique_user("deployer"), "developer")
    params = {"approval_id": aid, "release_id": rid, "environment": "production"}
    observations: list[tuple[dt.datetime, dt.datetime, str]] = []
    deadline = time.monotonic() + 15
    while True:
        before = dt.datetime.now(dt.UTC)
        answer = await http.get(f"{base}/v1/approvals/check", params=params, headers=reader)
        after = dt.datetime.now(dt.UTC)
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        observations.append((before, after, result))
        if result == "expired":
            break
        assert result == "active", answer.text
        assert time.monotonic() < deadline, "the approval never expired"
        await asyncio.sleep(0.05)

    assert observations[0][2] == "active"
    for before, after, result in observations:
        if result == "active":
            assert before < expires_at, (isoformat(before), created["expires_at"])
        else:
            assert after >= expires_at, (isoformat(after), created["expires_at"])

    current = await http.get(f"{base}/v1/approvals/{rid}/production", headers=reader)
    assert current.status_code == 200
    assert current.json()["status"] == "expired"
    assert current.json()["approval_id"] == aid

    # An expired approval cannot be revoked...
    revoke = await http.delete(f"{base}/v1/approvals/{aid}", headers=approver)
    assert revoke.status_code == 409, revoke.text
    assert revoke.json()["error"]["details"]["status"] == "expired"

    # ...and no longer blocks a new approval of the same release and environment, although its
    # row was still stored as active until this write. Racing writers still store exactly one.
    attempts = await asyncio.gather(
        *(
            http.post(
                f"{base}/v1/approvals", json=payload, headers=platform.headers(unique_user("approver"), "approver")
            )
            for _ in range(5)
        )
    )
    assert sorted(a.status_code for a in attempts) == [201, 409, 409, 409, 409], [a.text for a in attempts]
    renewed = next(a for a in attempts if a.status_code == 201)
    current = await http.get(f"{base}/v1/approvals/{rid}/production", headers=reader)
    assert current.json()["approval_id"] == renewed.json()["approval_id"]
    assert current.json()["status"] == "active"
    old = await http.get(f"{base}/v1/approvals/check", params=params, headers=reader)
    assert old.json()["result"] == "expired"


async def test_the_ttl_bounds_a_requested_expiry(
    platform: Platform, http: httpx.AsyncClient, short_ttl_approval_url: str, create_release: CreateRelease
) -> None:
    release = await create_release()
    payload = {
        "release_id": release["id"],
        "environment": "staging",
        "justification": "demo",
        "expires_at": isoformat(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)),
    }
    headers = platform.headers(unique_user("approver"), "approver")
    resp = await http.post(f"{short_ttl_approval_url}/v1/approvals", json=payload, headers=headers)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["details"]["field"] == "expires_at"
    assert err["details"]["ttl_seconds"] == 2.0
    assert "later than approvals may last" in err["message"]
