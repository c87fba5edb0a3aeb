"""The same client mistake gets the same 400 from every service, through the gateway.

Every create endpoint decodes its body with ``forge_common.http.decode_body`` and every list
endpoint reads ``limit``/``offset`` with ``forge_common.http.parse_page``; these tests send each
mistake to each endpoint and expect ``400 invalid_request`` whose ``details.field`` names what
to fix (``body`` when the body as a whole is wrong), never a 5xx.

The pipeline service is in the parametrisation too (``POST /v1/runs``, ``GET /v1/runs``).
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform


@dataclass(frozen=True)
class Create:
    path: str
    role: str
    body: dict[str, Any]
    required: tuple[str, ...]
    wrong_type: tuple[str, Any]
    unknown_enum: tuple[str, Any, str]


def _tag() -> str:
    return uuid.uuid4().hex[:10]


_ARTIFACT = {
    "name": "api-image",
    "type": "container",
    "tracking_oci_uri": "registry.example.com/acme/api-image:tracking",
    "primary_published_uri": "ghcr.io/acme/api-image:1.0.0",
}

CREATES = {
    "release": Create(
        path="/v1/releases",
        role="developer",
        body={
            "repository": f"acme-{_tag()}/repo",
            "project": "svc",
            "commit_sha": secrets.token_hex(20),
            "artifacts": [_ARTIFACT],
        },
        required=("repository", "project", "commit_sha"),
        wrong_type=("repository", 42),
        unknown_enum=("trigger", {"trigger_type": "cron"}, "trigger.trigger_type"),
    ),
    "deployment": Create(
        path="/v1/deployments",
        role="developer",
        body={"release_id": str(uuid.uuid4()), "environment": "dev"},
        required=("release_id", "environment"),
        wrong_type=("release_id", 42),
        unknown_enum=("environment", "qa", "environment"),
    ),
    "pipeline": Create(
        path="/v1/runs",
        role="developer",
        body={
            "repository": f"acme-{_tag()}/repo",
            "branch": "main",
            "commit_sha": secrets.token_hex(20),
            "trigger_type": "manual",
        },
        required=("repository", "branch", "commit_sha", "trigger_type"),
        wrong_type=("repository", 42),
        unknown_enum=("trigger_type", "cron", "trigger_type"),
    ),
    "approval": Create(
        path="/v1/approvals",
        role="approver",
        body={"release_id": str(uuid.uuid4()), "environment": "production", "justification": "ok"},
        required=("release_id", "environment", "justification"),
        wrong_type=("justification", 42),
        unknown_enum=("environment", "prod", "environment"),
    ),
}

LISTS = {
    "release": "/v1/releases/acme-{tag}/repo/svc",
    "deployment": "/v1/deployments/dev/acme-{tag}/repo/svc/history",
    "pipeline": "/v1/runs?repository=acme-{tag}/repo",
}

BAD_BODIES = {
    "not-json": b"{not json",
    "empty": b"",
    "blank": b"  \n",
    "array": b"[]",
    "null": b"null",
    "string": b'"hello"',
    "trailing-comma": b'{"a": 1,}',
    "truncated": b'{"a": ',
    # Nested past the interpreter's recursion limit: msgspec raises RecursionError, not a
    # DecodeError, and this must still be the client's 400.
    "deep-objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep-arrays": b"[" * 10_000 + b"]" * 10_000,
}

BAD_PAGES = {
    "limit=abc": "limit",
    "limit=0": "limit",
    "limit=-5": "limit",
    "limit=101": "limit",
    "limit=1000": "limit",
    "limit=1.5": "limit",
    "limit=%205": "limit",
    "limit=5_0": "limit",
    "offset=-1": "offset",
    "offset=x": "offset",
    "offset=10000001": "offset",
    "offset=99999999999999999999": "offset",
    "offset=" + "9" * 40: "offset",
}


def assert_invalid(resp: httpx.Response, field_name: str, *, only_field: bool = True) -> None:
    assert resp.status_code == 400, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "invalid_request"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["details"]["field"] == field_name, error
    if only_field:
        assert error["details"] == {"field": field_name}, error


@pytest.fixture
async def gateway(platform: Platform) -> Any:
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as client:
        yield client


def _and(path: str) -> str:
    """How a query parameter joins ``path`` (the pipeline's list path has one already)."""
    return "&" if "?" in path else "?"


def _headers(platform: Platform, role: str) -> dict[str, str]:
    return {**platform.headers(f"{role}-{_tag()}@example.com", role), "Content-Type": "application/json"}


@pytest.mark.parametrize("service", sorted(CREATES))
@pytest.mark.parametrize("mistake", sorted(BAD_BODIES))
async def test_a_body_that_is_not_a_json_object(
    platform: Platform, gateway: httpx.AsyncClient, service: str, mistake: str
) -> None:
    create = CREATES[service]
    resp = await gateway.post(create.path, content=BAD_BODIES[mistake], headers=_headers(platform, create.role))
    assert_invalid(resp, "body")


@pytest.mark.parametrize("service", sorted(CREATES))
async def test_garbage_after_a_valid_body(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    create = CREATES[service]
    raw = json.dumps(create.body).encode() + b" trailing"
    resp = await gateway.post(create.path, content=raw, headers=_headers(platform, create.role))
    assert_invalid(resp, "body")


@pytest.mark.parametrize("service", sorted(CREATES))
async def test_a_missing_field_is_named(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    create = CREATES[service]
    for name in create.required:
        body = {k: v for k, v in create.body.items() if k != name}
        resp = await gateway.post(create.path, json=body, headers=_headers(platform, create.role))
        assert_invalid(resp, name)


@pytest.mark.parametrize("service", sorted(CREATES))
async def test_a_wrong_type_is_named(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    create = CREATES[service]
    name, value = create.wrong_type
    resp = await gateway.post(create.path, json={**create.body, name: value}, headers=_headers(platform, create.role))
    assert_invalid(resp, name)
    nested = await gateway.post(
        create.path, json={**create.body, name: {"an": "object"}}, headers=_headers(platform, create.role)
    )
    assert_invalid(nested, name)


@pytest.mark.parametrize("service", sorted(CREATES))
async def test_an_unknown_enum_value_is_named(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    create = CREATES[service]
    name, value, reported = create.unknown_enum
    resp = await gateway.post(create.path, json={**create.body, name: value}, headers=_headers(platform, create.role))
    # The domain may add the allowed values next to the field.
    assert_invalid(resp, reported, only_field=False)


@pytest.mark.parametrize("service", sorted(LISTS))
@pytest.mark.parametrize("query", sorted(BAD_PAGES))
async def test_bad_paging_is_named(platform: Platform, gateway: httpx.AsyncClient, service: str, query: str) -> None:
    path = LISTS[service].format(tag=_tag())
    resp = await gateway.get(f"{path}{_and(path)}{query}", headers=_headers(platform, "viewer"))
    assert_invalid(resp, BAD_PAGES[query])


@pytest.mark.parametrize("service", sorted(LISTS))
async def test_the_bounds_themselves_are_accepted(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    path = LISTS[service].format(tag=_tag())
    headers = _headers(platform, "viewer")
    page = await gateway.get(f"{path}{_and(path)}limit=100&offset=10000000", headers=headers)
    assert page.status_code == 200, page.text
    assert (page.json()["limit"], page.json()["offset"]) == (100, 10_000_000)
    defaults = await gateway.get(f"{path}{_and(path)}limit=&offset=", headers=headers)
    assert (defaults.json()["limit"], defaults.json()["offset"]) == (20, 0)


# NUL (`\u0000` in JSON, `%00` in a URL) is valid input to the HTTP and JSON parsers, but no
# Postgres text can hold it: each of these was a 500 from psycopg before the services refused it.
@pytest.mark.parametrize("service", sorted(CREATES))
async def test_a_nul_character_in_a_body_is_named(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    create = CREATES[service]
    name = create.wrong_type[0]
    raw = json.dumps({**create.body, name: "a\u0000b"}).encode()
    assert b"\\u0000" in raw
    resp = await gateway.post(create.path, content=raw, headers=_headers(platform, create.role))
    assert_invalid(resp, name)


NUL_URLS = {
    "search-logs": ("/v1/search/logs?q=%00", "q"),
    "search-runs": ("/v1/search?q=a%00b", "q"),
    "search-releases": ("/v1/releases/search?q=%00", "q"),
    "release-by-alias": ("/v1/releases/acme/repo/svc/v%001", "path"),
    "deployment-project": ("/v1/deployments/dev/acme/repo/s%00vc", "path"),
    "approval-of-release": (f"/v1/approvals/{uuid.uuid4()}/produ%00ction", "path"),
    "runs-branch": ("/v1/runs?repository=acme/repo&branch=ma%00in", "branch"),
}


@pytest.mark.parametrize("case", sorted(NUL_URLS))
async def test_a_nul_character_in_a_url_is_named(platform: Platform, gateway: httpx.AsyncClient, case: str) -> None:
    url, field = NUL_URLS[case]
    resp = await gateway.get(url, headers=_headers(platform, "viewer"))
    assert_invalid(resp, field)


async def test_a_nul_character_in_a_revocation_reason_is_named(platform: Platform, gateway: httpx.AsyncClient) -> None:
    raw = json.dumps({"reason": "no\u0000"}).encode()
    resp = await gateway.request(
        "DELETE", f"/v1/approvals/{uuid.uuid4()}", content=raw, headers=_headers(platform, "approver")
    )
    assert_invalid(resp, "reason")


@pytest.mark.parametrize("service", sorted(CREATES))
async def test_an_unknown_field_is_named(platform: Platform, gateway: httpx.AsyncClient, service: str) -> None:
    """A misplaced field (`branch` at the top of a release, where it belongs in `trigger`) would
    otherwise be dropped without a word."""
    create = CREATES[service]
    body = {**create.body, "branch_name": "main"}
    resp = await gateway.post(create.path, json=body, headers=_headers(platform, create.role))
    assert_invalid(resp, "branch_name")


# Every list endpoint refuses a query parameter it does not take (forge_common.http.strict_query):
# a misspelt filter or page parameter would otherwise be dropped and the list answered unfiltered.
MISSPELT_QUERIES = {
    "runs": ("/v1/runs?repository=acme-{tag}/repo&brnach=main", "brnach", "viewer"),
    "releases": ("/v1/releases/acme-{tag}/repo/svc?limt=5", "limt", "viewer"),
    "deployment-history": ("/v1/deployments/dev/acme-{tag}/repo/svc/history?page=2", "page", "viewer"),
    "search": ("/v1/search?q=main&repo=acme-{tag}/repo", "repo", "viewer"),
    "release-search": ("/v1/releases/search?q=main&limit=5&curser=abc", "curser", "viewer"),
    "log-search": ("/v1/search/logs?q=error&after=2026-01-01T00:00:00Z", "after", "viewer"),
    "webhook-subscriptions": ("/v1/webhook-subscriptions?repo=acme-{tag}/repo", "repo", "admin"),
}


@pytest.mark.parametrize("case", sorted(MISSPELT_QUERIES))
async def test_an_unknown_query_parameter_of_a_list_is_named(
    platform: Platform, gateway: httpx.AsyncClient, case: str
) -> None:
    url, name, role = MISSPELT_QUERIES[case]
    resp = await gateway.get(url.format(tag=_tag()), headers=_headers(platform, role))
    assert_invalid(resp, name, only_field=False)
    error = resp.json()["error"]
    assert f"`{name}`" in error["message"]
    # What the endpoint does take, so the client can correct the spelling.
    assert "limit" in error["details"]["allowed"]
    assert name not in error["details"]["allowed"]


async def test_a_misspelt_filter_does_not_answer_the_unfiltered_list(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    repository = f"acme-{_tag()}/repo"
    created = await gateway.post(
        "/v1/runs",
        json={
            "repository": repository,
            "branch": "main",
            "commit_sha": secrets.token_hex(20),
            "trigger_type": "manual",
        },
        headers=_headers(platform, "developer"),
    )
    assert created.status_code == 201, created.text
    viewer = _headers(platform, "viewer")
    filtered = await gateway.get(f"/v1/runs?repository={repository}&branch=develop", headers=viewer)
    assert filtered.status_code == 200, filtered.text
    assert filtered.json()["runs"] == []
    # Before: 200 with the main branch's run, as if no branch had been asked for.
    misspelt = await gateway.get(f"/v1/runs?repository={repository}&brnach=develop", headers=viewer)
    assert_invalid(misspelt, "brnach", only_field=False)
    assert "branch" in misspelt.json()["error"]["details"]["allowed"]
