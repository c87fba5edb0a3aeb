"""The subscription API as a client sees it: validation, who may manage what, the SSRF rule,
pagination, and the disable rule (on an instance whose failing period is shrunk to a second)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from forge_common.events import PipelineRunCompleted
from forge_dev.testing import Platform

from .conftest import ADMIN, DEVELOPER, Instance, Receiver, start_instance, subscribe

BASE = "/v1/webhook-subscriptions"


def _repo() -> str:
    return f"acme/subs-{uuid.uuid4().hex[:8]}"


def _error(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    if field is not None:
        assert error["details"]["field"] == field, error
    return error


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
    ],
)
async def test_internal_targets_are_refused(platform: Platform, url: str) -> None:
    """The platform's own pipeline service runs with the default FORGE_WEBHOOK_ALLOW_PRIVATE=false."""
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        r = await client.post(BASE, json={"url": url, "event_types": ["*"]}, headers=platform.headers(ADMIN, "admin"))
    error = _error(r, 400, "url")
    assert "address" in error["message"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/hook"])
async def test_link_local_targets_are_refused_even_where_private_ones_are_allowed(
    client: httpx.AsyncClient, hooks: Instance, url: str
) -> None:
    """The hooks instance runs with FORGE_WEBHOOK_ALLOW_PRIVATE=true (its receivers are on
    127.0.0.1); the cloud metadata service's range is still no place for a webhook."""
    r = await client.post(f"{hooks.url}{BASE}", json={"url": url, "event_types": ["*"]}, headers=hooks.headers())
    error = _error(r, 400, "url")
    assert "link-local address" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x", "event_types": ["*"]}, "url"),
        ({"url": "not a url", "event_types": ["*"]}, "url"),
        ({"url": "https://example.com/x", "event_types": []}, "event_types"),
        ({"url": "https://example.com/x", "event_types": ["build.*"]}, "event_types"),
        ({"url": "https://example.com/x", "event_types": ["*"], "repository": "no-slash"}, "repository"),
        ({"url": "https://example.com/x", "event_types": ["*"], "environment": "qa"}, "environment"),
        ({"url": "https://example.com/x", "event_types": ["*"], "secret": "mine"}, "secret"),
        ({"event_types": ["*"]}, "url"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    client: httpx.AsyncClient, hooks: Instance, body: dict[str, Any], field: str
) -> None:
    r = await client.post(f"{hooks.url}{BASE}", json=body, headers=hooks.headers())
    _error(r, 400, field)


async def test_developers_manage_repository_scoped_subscriptions_only(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver
) -> None:
    dev = hooks.headers(DEVELOPER, "developer")
    repository = _repo()
    refused = await client.post(f"{hooks.url}{BASE}", json={"url": receiver.path(), "event_types": ["*"]}, headers=dev)
    _error(refused, 403)
    viewer = await client.get(f"{hooks.url}{BASE}", headers=hooks.headers("vic@acme.io", "viewer"))
    _error(viewer, 403)

    mine = await subscribe(
        client, hooks, {"url": receiver.path(), "event_types": ["*"], "repository": repository}, DEVELOPER, "developer"
    )
    everything = await subscribe(client, hooks, {"url": receiver.path(), "event_types": ["*"]})

    _error(await client.get(f"{hooks.url}{BASE}/{everything['id']}", headers=dev), 403)
    _error(await client.patch(f"{hooks.url}{BASE}/{everything['id']}", json={"active": False}, headers=dev), 403)
    _error(await client.delete(f"{hooks.url}{BASE}/{everything['id']}", headers=dev), 403)
    _error(await client.get(f"{hooks.url}{BASE}/{everything['id']}/deliveries", headers=dev), 403)
    # Nor may a developer widen their own subscription to every repository.
    _error(await client.patch(f"{hooks.url}{BASE}/{mine['id']}", json={"repository": None}, headers=dev), 403)

    listed = await client.get(f"{hooks.url}{BASE}", headers=dev)
    assert listed.status_code == 200
    ids = {s["id"] for s in listed.json()["subscriptions"]}
    assert mine["id"] in ids
    assert everything["id"] not in ids
    assert all(s["repository"] is not None for s in listed.json()["subscriptions"])
    admin_list = await client.get(f"{hooks.url}{BASE}", params={"limit": "100"}, headers=hooks.headers())
    assert everything["id"] in {s["id"] for s in admin_list.json()["subscriptions"]}

    changed = await client.patch(
        f"{hooks.url}{BASE}/{mine['id']}", json={"event_types": ["release.created"], "environment": "dev"}, headers=dev
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["event_types"], changed.json()["environment"]) == (["release.created"], "dev")
    assert (await client.delete(f"{hooks.url}{BASE}/{mine['id']}", headers=dev)).status_code == 204
    _error(await client.get(f"{hooks.url}{BASE}/{mine['id']}", headers=dev), 404)
    _error(await client.get(f"{hooks.url}{BASE}/not-a-uuid", headers=dev), 400, "id")
    await client.delete(f"{hooks.url}{BASE}/{everything['id']}", headers=hooks.headers())


async def test_list_pages_by_cursor(client: httpx.AsyncClient, hooks: Instance, receiver: Receiver) -> None:
    repository = _repo()
    made = [
        (await subscribe(client, hooks, {"url": receiver.path(), "event_types": ["*"], "repository": repository}))["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    params: dict[str, str] = {"repository": repository, "limit": "2"}
    while True:
        r = await client.get(f"{hooks.url}{BASE}", params=params, headers=hooks.headers())
        assert r.status_code == 200, r.text
        seen += [s["id"] for s in r.json()["subscriptions"]]
        if r.json()["next_cursor"] is None:
            break
        params["cursor"] = r.json()["next_cursor"]
    assert seen == list(reversed(made))
    other = await client.get(
        f"{hooks.url}{BASE}", params={"cursor": params["cursor"], "repository": _repo()}, headers=hooks.headers()
    )
    _error(other, 400, "cursor")
    _error(await client.get(f"{hooks.url}{BASE}", params={"limit": "0"}, headers=hooks.headers()), 400, "limit")


@pytest.fixture(scope="module")
def failing(platform: Platform) -> Iterator[Instance]:
    """Disabled after 1.5 s of failures (3 days in production); retries keep going meanwhile."""
    with start_instance(
        platform, "failing", {"FORGE_WEBHOOK_DISABLE_AFTER": "1.5", "FORGE_WEBHOOK_RETRY_LONGEST": "0.5"}
    ) as instance:
        yield instance


async def test_a_subscription_failing_for_the_whole_period_is_disabled_and_says_why(
    client: httpx.AsyncClient, failing: Instance, receiver: Receiver
) -> None:
    repository = _repo()
    url = receiver.path(*[500] * 1000)
    sub = await subscribe(client, failing, {"url": url, "event_types": ["*"], "repository": repository})
    await failing.publish(
        PipelineRunCompleted(
            run_id=str(uuid.uuid4()), repository=repository, commit_sha="d" * 40, status="failed", duration_seconds=1
        )
    )
    await receiver.wait(url, 2)
    view: dict[str, Any] = {}
    for _ in range(200):
        view = (await client.get(f"{failing.url}{BASE}/{sub['id']}", headers=failing.headers())).json()
        if not view["active"]:
            break
        await asyncio.sleep(0.05)
    assert view["active"] is False, view
    assert "every delivery failed since" in view["disabled_reason"]
    assert "HTTP 500" in view["disabled_reason"]
    assert view["failing_since"] is not None

    # No more attempts while disabled; redelivery is refused until it is re-enabled.
    deliveries = (await client.get(f"{failing.url}{BASE}/{sub['id']}/deliveries", headers=failing.headers())).json()
    (delivery,) = deliveries["deliveries"]
    # The receiver's 10,000-byte error page is kept to its first 4 KB.
    assert delivery["response_status"] == 500
    assert delivery["response_body"] == "x" * 4096
    refused = await client.post(
        f"{failing.url}{BASE}/{sub['id']}/deliveries/{delivery['id']}/redeliver", headers=failing.headers()
    )
    _error(refused, 409)

    receiver.scripts[url.removeprefix(receiver.url)] = []  # the target is fixed: 200 from now on
    enabled = await client.patch(f"{failing.url}{BASE}/{sub['id']}", json={"active": True}, headers=failing.headers())
    assert enabled.status_code == 200, enabled.text
    assert (enabled.json()["active"], enabled.json()["disabled_reason"]) == (True, None)
    count = len(receiver.at(url))
    await receiver.wait(url, count + 1)
    for _ in range(200):
        (delivery,) = (
            await client.get(f"{failing.url}{BASE}/{sub['id']}/deliveries", headers=failing.headers())
        ).json()["deliveries"]
        if delivery["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert delivery["status"] == "succeeded"
