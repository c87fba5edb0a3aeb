"""Approvals as a client sees them: create, read, revoke, check, events, roles and errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from forge_common.events import isoformat
from forge_dev.testing import Platform, read_events, wait_for_event

from .conftest import CreateRelease, unique_user

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = dt.timedelta(hours=24)


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code, err
    assert err["message"]
    return err


class Approvals:
    """The approval API through the client's entry point."""

    def __init__(self, platform: Platform, http: httpx.AsyncClient, base: str) -> None:
        self.platform = platform
        self.http = http
        self.base = base

    def headers(self, who: str, *roles: str, service_account: bool = False) -> dict[str, str]:
        return self.platform.headers(who, *roles, service_account=service_account)

    async def create(self, who: str, body: dict[str, Any], *roles: str, base: str | None = None) -> httpx.Response:
        return await self.http.post(
            f"{base or self.base}/v1/approvals", json=body, headers=self.headers(who, *(roles or ("approver",)))
        )

    async def get(self, release_id: str, environment: str, who: str = "viewer@example.com") -> httpx.Response:
        return await self.http.get(
            f"{self.base}/v1/approvals/{release_id}/{environment}", headers=self.headers(who, "viewer")
        )

    async def revoke(self, approval_id: str, who: str, *roles: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(who, *(roles or ("approver",))), **kwargs.pop("headers", {})}
        return await self.http.request("DELETE", f"{self.base}/v1/approvals/{approval_id}", headers=headers, **kwargs)

    async def check(self, who: str = "deployer@example.com", **params: str) -> httpx.Response:
        return await self.http.get(
            f"{self.base}/v1/approvals/check", params=params, headers=self.headers(who, "developer")
        )


@pytest.fixture
def approvals(platform: Platform, http: httpx.AsyncClient, api_url: Callable[[str], str]) -> Approvals:
    return Approvals(platform, http, api_url("approval"))


def body(release_id: str, environment: str = "production", **extra: Any) -> dict[str, Any]:
    return {"release_id": release_id, "environment": environment, "justification": "CAB-42 signed off", **extra}


# --- create and read -----------------------------------------------------------------------------


async def test_an_approver_approves_a_release(
    platform: Platform, approvals: Approvals, create_release: CreateRelease
) -> None:
    release = await create_release()
    approver = unique_user("approver")
    before = dt.datetime.now(dt.UTC)

    resp = await approvals.create(approver, body(release["id"]))

    assert resp.status_code == 201, resp.text
    created = resp.json()
    uuid.UUID(created["approval_id"])
    assert created["approver"] == approver
    assert created["status"] == "active"
    assert created["release_id"] == release["id"]
    assert created["environment"] == "production"
    assert created["approved_at"].endswith("Z")
    assert created["expires_at"].endswith("Z")
    approved_at = ts(created["approved_at"])
    assert before - dt.timedelta(seconds=1) <= approved_at <= dt.datetime.now(dt.UTC)
    assert ts(created["expires_at"]) - approved_at == DAY  # FORGE_APPROVAL_TTL default: 24h

    current = await approvals.get(release["id"], "production")
    assert current.status_code == 200, current.text
    assert current.json() == {
        "approval_id": created["approval_id"],
        "approver": approver,
        "approved_at": created["approved_at"],
        "expires_at": created["expires_at"],
        "status": "active",
        "justification": "CAB-42 signed off",
        "release_id": release["id"],
        "environment": "production",
    }

    event = await wait_for_event(
        platform, "approval.created", lambda e: e["data"]["approval_id"] == created["approval_id"]
    )
    assert event["data"] == {
        "approval_id": created["approval_id"],
        "release_id": release["id"],
        "environment": "production",
        "approver": approver,
        "expires_at": created["expires_at"],
        "repository": release["repository"],
        "project": "api",
    }
    assert event["event_type"] == "approval.created"
    assert event["timestamp"].endswith("Z")
    published = await read_events(
        platform, "approval.created", lambda e: e["data"]["approval_id"] == created["approval_id"]
    )
    assert len(published) == 1


async def test_admins_approve_and_each_environment_has_its_own_approval(
    approvals: Approvals, create_release: CreateRelease
) -> None:
    release = await create_release()
    admin = unique_user("admin")
    ids = set()
    for env in ("dev", "staging", "production"):
        resp = await approvals.create(admin, body(release["id"], env), "admin")
        assert resp.status_code == 201, resp.text
        ids.add(resp.json()["approval_id"])
        current = await approvals.get(release["id"], env)
        assert current.json()["approval_id"] == resp.json()["approval_id"]
        assert current.json()["environment"] == env
    assert len(ids) == 3


async def test_an_earlier_expiry_can_be_requested(approvals: Approvals, create_release: CreateRelease) -> None:
    release = await create_release()
    wanted = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    resp = await approvals.create(unique_user("approver"), body(release["id"], expires_at=isoformat(wanted)))
    assert resp.status_code == 201, resp.text
    assert ts(resp.json()["expires_at"]) == wanted
    # an offset other than Z is understood
    other = await create_release()
    local = wanted.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    resp = await approvals.create(unique_user("approver"), body(other["id"], expires_at=local.isoformat()))
    assert resp.status_code == 201, resp.text
    assert resp.json()["expires_at"] == isoformat(wanted)


@pytest.mark.parametrize(
    ("expires_at", "message"),
    [
        (lambda now: isoformat(now - dt.timedelta(minutes=1)), "not in the future"),
        (lambda now: isoformat(now + DAY + dt.timedelta(hours=1)), "later than approvals may last"),
        (lambda now: "tomorrow", "ISO-8601"),
        (lambda now: (now + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat(), "UTC offset"),
    ],
)
async def test_a_bad_expiry_is_refused(
    approvals: Approvals, create_release: CreateRelease, expires_at: Callable[[dt.datetime], str], message: str
) -> None:
    release = await create_release()
    resp = await approvals.create(
        unique_user("approver"), body(release["id"], expires_at=expires_at(dt.datetime.now(dt.UTC)))
    )
    err = error(resp, 400, "invalid_request")
    assert message in err["message"]
    assert err["details"]["field"] == "expires_at"
    assert (await approvals.get(release["id"], "production")).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"justification": ""}, "justification"),
        ({"justification": "   "}, "justification"),
        ({"environment": "prod"}, "environment"),
        ({"environment": "Production"}, "environment"),
        ({"release_id": "42"}, "release_id"),
        ({"justification": None}, "justification"),
    ],
)
async def test_invalid_requests_are_refused(
    approvals: Approvals, create_release: CreateRelease, change: dict[str, Any], field: str
) -> None:
    release = await create_release()
    resp = await approvals.create(unique_user("approver"), {**body(release["id"]), **change})
    err = error(resp, 400, "invalid_request")
    assert field in (err["details"].get("field", ""), err["message"])


@pytest.mark.parametrize("missing", ["release_id", "environment", "justification"])
async def test_required_fields_are_required(approvals: Approvals, missing: str) -> None:
    payload = body(str(uuid.uuid4()))
    del payload[missing]
    resp = await approvals.create(unique_user("approver"), payload)
    err = error(resp, 400, "invalid_request")
    assert missing in str(err)


async def test_a_body_that_is_not_json_is_refused(approvals: Approvals, platform: Platform) -> None:
    resp = await approvals.http.post(
        f"{approvals.base}/v1/approvals",
        content=b"{not json",
        headers={**approvals.headers(unique_user("approver"), "approver"), "Content-Type": "application/json"},
    )
    error(resp, 400, "invalid_request")


async def test_an_unknown_release_cannot_be_approved(approvals: Approvals) -> None:
    missing = str(uuid.uuid4())
    resp = await approvals.create(unique_user("approver"), body(missing))
    err = error(resp, 404, "resource_not_found")
    assert missing in err["message"]
    assert err["details"]["release_id"] == missing


# --- separation of duties and roles ----------------------------------------------------------------


@pytest.mark.parametrize("roles", [("admin",), ("developer", "approver")])
async def test_the_creator_of_a_release_may_not_approve_it(
    approvals: Approvals, create_release: CreateRelease, roles: tuple[str, ...]
) -> None:
    creator = unique_user("lead")
    release = await create_release(creator, *roles)
    resp = await approvals.create(creator, body(release["id"]), *roles)
    err = error(resp, 403, "authorization_failed")
    assert f"{creator} created release {release['id']} and may not approve it" in err["message"]
    assert err["details"]["reason"] == "self_approval"
    assert (await approvals.get(release["id"], "production")).status_code == 404
    # someone else may
    assert (await approvals.create(unique_user("approver"), body(release["id"]))).status_code == 201


@pytest.mark.parametrize(
    ("roles", "service_account"), [(("developer",), False), (("viewer",), False), (("worker",), True)]
)
async def test_only_approvers_and_admins_approve_or_revoke(
    approvals: Approvals, create_release: CreateRelease, roles: tuple[str, ...], service_account: bool
) -> None:
    release = await create_release()
    who = unique_user("someone")
    resp = await approvals.http.post(
        f"{approvals.base}/v1/approvals",
        json=body(release["id"]),
        headers=approvals.headers(who, *roles, service_account=service_account),
    )
    error(resp, 403, "authorization_failed")

    created = (await approvals.create(unique_user("approver"), body(release["id"]))).json()
    resp = await approvals.http.delete(
        f"{approvals.base}/v1/approvals/{created['approval_id']}",
        headers=approvals.headers(who, *roles, service_account=service_account),
    )
    error(resp, 403, "authorization_failed")
    assert (await approvals.get(release["id"], "production")).json()["status"] == "active"


async def test_requests_without_a_valid_token_are_refused(approvals: Approvals, platform: Platform) -> None:
    rid = str(uuid.uuid4())
    for method, path in [
        ("POST", "/v1/approvals"),
        ("GET", f"/v1/approvals/{rid}/production"),
        ("DELETE", f"/v1/approvals/{rid}"),
        ("GET", f"/v1/approvals/check?approval_id={rid}&release_id={rid}&environment=dev"),
    ]:
        resp = await approvals.http.request(
            method, f"{approvals.base}{path}", json=body(rid) if method == "POST" else None
        )
        error(resp, 401, "authentication_failed")
    expired = platform.token("approver@example.com", "approver", expires_in=-60)
    resp = await approvals.http.post(
        f"{approvals.base}/v1/approvals", json=body(rid), headers={"Authorization": f"Bearer {expired}"}
    )
    error(resp, 401, "authentication_failed")


# --- one active approval per release and environment ------------------------------------------------


async def test_a_second_active_approval_conflicts(approvals: Approvals, create_release: CreateRelease) -> None:
    release = await create_release()
    first = (await approvals.create(unique_user("approver"), body(release["id"]))).json()
    resp = await approvals.create(unique_user("approver"), body(release["id"]))
    err = error(resp, 409, "resource_conflict")
    assert err["details"]["existing_approval_id"] == first["approval_id"]
    assert err["details"]["expires_at"] == first["expires_at"]


async def test_concurrent_approvals_store_exactly_one(
    platform: Platform, approvals: Approvals, create_release: CreateRelease
) -> None:
    release = await create_release()
    responses = await asyncio.gather(
        *(approvals.create(unique_user("approver"), body(release["id"])) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 7, [r.text for r in responses]
    winner = next(r.json() for r in responses if r.status_code == 201)
    assert all(
        r.json()["error"]["details"]["existing_approval_id"] == winner["approval_id"]
        for r in responses
        if r.status_code == 409
    )
    assert (await approvals.get(release["id"], "production")).json()["approval_id"] == winner["approval_id"]
    await wait_for_event(platform, "approval.created", lambda e: e["data"]["approval_id"] == winner["approval_id"])
    events = await read_events(platform, "approval.created", lambda e: e["data"]["release_id"] == release["id"])
    assert [e["data"]["approval_id"] for e in events] == [winner["approval_id"]]


# --- read errors ------------------------------------------------------------------------------------


async def test_no_approval_is_a_404(approvals: Approvals, create_release: CreateRelease) -> None:
    release = await create_release()
    await approvals.create(unique_user("approver"), body(release["id"], "staging"))
    resp = await approvals.get(release["id"], "production")
    err = error(resp, 404, "resource_not_found")
    assert release["id"] in err["message"]
    assert "production" in err["message"]
    error(await approvals.get(str(uuid.uuid4()), "dev"), 404, "resource_not_found")


async def test_bad_read_paths_are_400(approvals: Approvals) -> None:
    err = error(await approvals.get("not-a-uuid", "production"), 400, "invalid_request")
    assert err["details"]["field"] == "release_id"
    err = error(await approvals.get(str(uuid.uuid4()), "qa"), 400, "invalid_request")
    assert err["details"]["field"] == "environment"


# --- revocation -------------------------------------------------------------------------------------


async def test_revocation_is_immediately_visible_to_the_check(
    platform: Platform, approvals: Approvals, create_release: CreateRelease
) -> None:
    release = await create_release()
    created = (await approvals.create(unique_user("approver"), body(release["id"]))).json()
    aid = created["approval_id"]
    check = {"approval_id": aid, "release_id": release["id"], "environment": "production"}
    assert (await approvals.check(**check)).json()["result"] == "active"

    revoker = unique_user("security")
    resp = await approvals.revoke(aid, revoker, json={"reason": "incident INC-7"})
    assert resp.status_code == 200, resp.text
    revoked = resp.json()
    assert revoked["status"] == "revoked"
    assert revoked["revoked_by"] == revoker
    assert revoked["revocation_reason"] == "incident INC-7"
    assert revoked["approval_id"] == aid
    assert ts(revoked["revoked_at"]) <= dt.datetime.now(dt.UTC)

    answer = await approvals.check(**check)
    assert answer.status_code == 200
    assert answer.json() == {
        "result": "revoked",
        "approval_id": aid,
        "expires_at": created["expires_at"],
        "checked_at": answer.json()["checked_at"],
    }
    current = (await approvals.get(release["id"], "production")).json()
    assert current["status"] == "revoked"
    assert current["revoked_by"] == revoker

    event = await wait_for_event(platform, "approval.revoked", lambda e: e["data"]["approval_id"] == aid)
    assert event["data"] == {
        "approval_id": aid,
        "release_id": release["id"],
        "environment": "production",
        "revoked_by": revoker,
        "reason": "incident INC-7",
        "repository": release["repository"],
        "project": "api",
    }

    by_id = await approvals.http.get(
        f"{approvals.base}/v1/approvals/{aid}", headers=approvals.headers("v@example.com", "viewer")
    )
    assert by_id.status_code == 200, by_id.text
    assert by_id.json() == current

    again = await approvals.revoke(aid, unique_user("security"))
    err = error(again, 409, "resource_conflict")
    assert err["details"]["status"] == "revoked"
    assert len(await read_events(platform, "approval.revoked", lambda e: e["data"]["approval_id"] == aid)) == 1


async def test_revocation_reason_by_query_or_none(
    platform: Platform, approvals: Approvals, create_release: CreateRelease
) -> None:
    release = await create_release()
    first = (await approvals.create(unique_user("approver"), body(release["id"], "dev"))).json()
    resp = await approvals.revoke(first["approval_id"], unique_user("approver"), params={"reason": "wrong build"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["revocation_reason"] == "wrong build"

    second = (await approvals.create(unique_user("admin"), body(release["id"], "staging"), "admin")).json()
    resp = await approvals.revoke(second["approval_id"], unique_user("admin"), "admin")
    assert resp.status_code == 200, resp.text
    assert "revocation_reason" not in resp.json()
    event = await wait_for_event(
        platform, "approval.revoked", lambda e: e["data"]["approval_id"] == second["approval_id"]
    )
    assert event["data"]["reason"] == ""


async def test_a_revoked_approval_can_be_replaced(approvals: Approvals, create_release: CreateRelease) -> None:
    release = await create_release()
    old = (await approvals.create(unique_user("approver"), body(release["id"]))).json()
    assert (await approvals.revoke(old["approval_id"], unique_user("approver"))).status_code == 200
    new = await approvals.create(unique_user("approver"), body(release["id"]))
    assert new.status_code == 201, new.text
    current = (await approvals.get(release["id"], "production")).json()
    assert current["approval_id"] == new.json()["approval_id"]
    assert current["status"] == "active"


async def test_revocation_errors(approvals: Approvals) -> None:
    missing = str(uuid.uuid4())
    viewer = approvals.headers("v@example.com", "viewer")
    error(
        await approvals.http.get(f"{approvals.base}/v1/approvals/{missing}", headers=viewer), 404, "resource_not_found"
    )
    error(await approvals.http.get(f"{approvals.base}/v1/approvals/nope", headers=viewer), 400, "invalid_request")
    err = error(await approvals.revoke(missing, unique_user("approver")), 404, "resource_not_found")
    assert missing in err["message"]
    err = error(await approvals.revoke("nope", unique_user("approver")), 400, "invalid_request")
    assert err["details"]["field"] == "approval_id"
    resp = await approvals.revoke(
        missing, unique_user("approver"), content=b"{oops", headers={"Content-Type": "application/json"}
    )
    error(resp, 400, "invalid_request")


# --- the check (contract #3) ------------------------------------------------------------------------


async def test_the_check_answers_each_case(approvals: Approvals, create_release: CreateRelease) -> None:
    release, other = await create_release(), await create_release()
    created = (await approvals.create(unique_user("approver"), body(release["id"]))).json()
    aid = created["approval_id"]

    async def result(**params: str) -> dict[str, Any]:
        resp = await approvals.check(**params)
        assert resp.status_code == 200, resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    active = await result(approval_id=aid, release_id=release["id"], environment="production")
    assert active["result"] == "active"
    assert active["approval_id"] == aid
    assert active["expires_at"] == created["expires_at"]
    assert (await result(approval_id=aid, release_id=release["id"], environment="staging"))["result"] == "mismatch"
    assert (await result(approval_id=aid, release_id=other["id"], environment="production"))["result"] == "mismatch"
    missing = str(uuid.uuid4())
    nf = await result(approval_id=missing, release_id=release["id"], environment="production")
    assert nf == {"result": "not_found", "approval_id": missing, "expires_at": None, "checked_at": nf["checked_at"]}


@pytest.mark.parametrize("drop", ["approval_id", "release_id", "environment"])
async def test_the_check_needs_every_parameter(approvals: Approvals, drop: str) -> None:
    params = {"approval_id": str(uuid.uuid4()), "release_id": str(uuid.uuid4()), "environment": "production"}
    del params[drop]
    err = error(await approvals.check(**params), 400, "invalid_request")
    assert err["details"]["field"] == drop
