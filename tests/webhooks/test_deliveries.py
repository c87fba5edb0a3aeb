"""Deliveries as a receiver sees them: signed, retried with growing waits, redelivered on request,
filtered, and exactly once per event and subscription across a restart of the service."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import uuid
from typing import Any

import httpx
import msgspec
import nats
import psycopg
from standardwebhooks.webhooks import Webhook

from forge_common.events import DeploymentCreated, PipelineRunCompleted, ReleaseCreated

from .conftest import DEVELOPER, Instance, Received, Receiver, deliveries, subscribe


def _repo() -> str:
    return f"acme/hooks-{uuid.uuid4().hex[:8]}"


def verify(secret: str, received: Received) -> None:
    """The Standard Webhooks check, written out: HMAC-SHA256 keyed with the base64-decoded
    secret over ``id.timestamp.body``, base64, as ``v1,<signature>``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + received.body, hashlib.sha256).digest()
    ).decode()
    signatures = received.headers["webhook-signature"].split(" ")
    assert f"v1,{expected}" in signatures
    # ... and the reference library agrees.
    Webhook(secret).verify(received.body, received.headers)


def gaps(requests: list[Received]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def _completed(repository: str) -> PipelineRunCompleted:
    return PipelineRunCompleted(
        run_id=str(uuid.uuid4()), repository=repository, commit_sha="a" * 40, status="success", duration_seconds=3
    )


async def test_a_run_event_arrives_signed_with_the_envelope_as_body(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver
) -> None:
    repository = _repo()
    url = receiver.path()
    sub = await subscribe(
        client, hooks, {"url": url, "event_types": ["pipeline.run.*"], "repository": repository}, DEVELOPER, "developer"
    )
    assert sub["secret"].startswith("whsec_")
    run = await client.post(
        f"{hooks.url}/v1/runs",
        json={"repository": repository, "branch": "main", "commit_sha": uuid.uuid4().hex, "trigger_type": "manual"},
        headers=hooks.headers(DEVELOPER, "developer"),
    )
    assert run.status_code == 201, run.text

    (got,) = await receiver.wait(url, 1)
    verify(sub["secret"], got)
    body = msgspec.json.decode(got.body)
    assert body["event_type"] == "pipeline.run.created"
    assert body["data"]["run_id"] == run.json()["id"]
    assert set(body) == {"event_id", "event_type", "timestamp", "data"}
    assert got.headers["webhook-id"] == body["event_id"]
    assert got.headers["Content-Type"] == "application/json"

    (delivery,) = await _settled(client, hooks, sub["id"], 1)
    assert delivery["status"] == "succeeded"
    assert (delivery["attempt"], delivery["response_status"], delivery["event_type"]) == (
        1,
        200,
        "pipeline.run.created",
    )
    assert delivery["duration_ms"] >= 0
    assert delivery["next_retry_at"] is None
    # The secret is shown once: never again.
    again = await client.get(f"{hooks.url}/v1/webhook-subscriptions/{sub['id']}", headers=hooks.headers())
    assert "secret" not in again.json()


async def _settled(
    client: httpx.AsyncClient, hooks: Instance, subscription_id: str, count: int
) -> list[dict[str, Any]]:
    """The deliveries once ``count`` of them are no longer pending (the receiver has answered,
    the outcome is recorded a moment later)."""
    for _ in range(200):
        found = await deliveries(client, hooks, subscription_id)
        if len([d for d in found if d["status"] != "pending"]) >= count:
            return found
        await _tick()
    raise AssertionError(f"deliveries of {subscription_id} still pending: {found}")


async def _tick() -> None:
    await asyncio.sleep(0.05)


async def test_retried_after_500s_with_growing_waits(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver
) -> None:
    repository = _repo()
    url = receiver.path(500, 500, 503, 500)
    sub = await subscribe(
        client, hooks, {"url": url, "event_types": ["pipeline.run.completed"], "repository": repository}
    )
    event = await hooks.publish(_completed(repository))

    attempts = await receiver.wait(url, 5)
    assert {a.headers["webhook-id"] for a in attempts} == {event["event_id"]}
    for attempt in attempts:
        verify(sub["secret"], attempt)
        assert msgspec.json.decode(attempt.body) == event
    waits = gaps(attempts)
    # Exponential backoff with jitter: each wait at least the one before it (small slack for
    # the loop's polling), and the last clearly longer than the first.
    assert all(b >= a - 0.06 for a, b in itertools.pairwise(waits)), waits
    assert waits[-1] > 2 * waits[0], waits

    (delivery,) = await _settled(client, hooks, sub["id"], 1)
    assert (delivery["status"], delivery["attempt"], delivery["response_status"]) == ("succeeded", 5, 200)


async def test_retried_after_timeouts_with_growing_waits(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver
) -> None:
    repository = _repo()
    # FORGE_WEBHOOK_TIMEOUT is 2 s here: a target answering after 2.5 s has timed out.
    url = receiver.path(("sleep", 2.5), ("sleep", 2.5), ("sleep", 2.5))
    sub = await subscribe(client, hooks, {"url": url, "event_types": ["pipeline.run.*"], "repository": repository})
    await hooks.publish(_completed(repository))

    attempts = await receiver.wait(url, 4)
    waits = gaps(attempts)
    assert all(b >= a - 0.06 for a, b in itertools.pairwise(waits)), waits
    (delivery,) = await _settled(client, hooks, sub["id"], 1)
    assert (delivery["status"], delivery["attempt"]) == ("succeeded", 4)

    # While it timed out, the deliveries list said why and when the next attempt was due.
    url2 = receiver.path(*[("sleep", 2.5)] * 50)
    sub2 = await subscribe(client, hooks, {"url": url2, "event_types": ["pipeline.run.*"], "repository": repository})
    await hooks.publish(_completed(repository))
    await receiver.wait(url2, 2)
    (pending,) = await _until(client, hooks, sub2["id"], lambda d: d["error"] is not None)
    assert pending["status"] == "pending"
    assert "no answer within 2s" in pending["error"]
    assert pending["next_retry_at"] is not None
    await client.delete(f"{hooks.url}/v1/webhook-subscriptions/{sub2['id']}", headers=hooks.headers())


async def _until(client: httpx.AsyncClient, hooks: Instance, subscription_id: str, ok: Any) -> list[dict[str, Any]]:
    for _ in range(200):
        found = await deliveries(client, hooks, subscription_id)
        if found and all(ok(d) for d in found):
            return found
        await _tick()
    raise AssertionError(f"deliveries of {subscription_id}: {found}")


async def test_redelivered_on_request(client: httpx.AsyncClient, hooks: Instance, receiver: Receiver) -> None:
    repository = _repo()
    url = receiver.path()
    sub = await subscribe(client, hooks, {"url": url, "event_types": ["*"], "repository": repository})
    event = await hooks.publish(_completed(repository))
    (first,) = await receiver.wait(url, 1)
    (delivery,) = await _settled(client, hooks, sub["id"], 1)

    r = await client.post(
        f"{hooks.url}/v1/webhook-subscriptions/{sub['id']}/deliveries/{delivery['id']}/redeliver",
        headers=hooks.headers(),
    )
    assert r.status_code == 202, r.text
    second = (await receiver.wait(url, 2))[1]
    assert second.body == first.body == msgspec.json.encode(event)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    verify(sub["secret"], second)
    (after,) = await _until(client, hooks, sub["id"], lambda d: d["attempt"] == 2 and d["status"] == "succeeded")
    assert after["id"] == delivery["id"]

    unknown = await client.post(
        f"{hooks.url}/v1/webhook-subscriptions/{sub['id']}/deliveries/{uuid.uuid4()}/redeliver",
        headers=hooks.headers(),
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "resource_not_found"


async def test_event_type_repository_and_environment_filters(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver
) -> None:
    mine, other = _repo(), _repo()
    releases = receiver.path()
    runs = receiver.path()
    staging = receiver.path()
    await subscribe(client, hooks, {"url": releases, "event_types": ["release.*"], "repository": mine})
    await subscribe(client, hooks, {"url": runs, "event_types": ["pipeline.run.completed"], "repository": mine.upper()})
    await subscribe(client, hooks, {"url": staging, "event_types": ["deployment.*"], "environment": "staging"})

    def release(repository: str) -> ReleaseCreated:
        return ReleaseCreated(
            release_id=str(uuid.uuid4()),
            repository=repository,
            project="api",
            commit_sha="b" * 40,
            release_number=1,
            trigger_type="manual",
        )

    def deployment(environment: str) -> DeploymentCreated:
        return DeploymentCreated(
            deployment_id=str(uuid.uuid4()),
            release_id=str(uuid.uuid4()),
            environment=environment,
            deployed_by="someone",
            gitops_commit_sha="c" * 40,
            repository=other,
            project="api",
        )

    ignored = [
        await hooks.publish(release(other)),
        await hooks.publish(_completed(other)),
        await hooks.publish(deployment("production")),
    ]
    wanted_release = await hooks.publish(release(mine))
    wanted_run = await hooks.publish(_completed(mine))
    wanted_deployment = await hooks.publish(deployment("staging"))
    # A marker published last to each: once it arrived, everything before it was fanned out.
    markers = [await hooks.publish(release(mine)), await hooks.publish(_completed(mine))]
    markers.append(await hooks.publish(deployment("staging")))

    got_releases = await receiver.wait(releases, 2)
    got_runs = await receiver.wait(runs, 2)
    got_staging = await receiver.wait(staging, 2)
    assert [msgspec.json.decode(r.body)["event_id"] for r in got_releases] == [
        wanted_release["event_id"],
        markers[0]["event_id"],
    ]
    assert [msgspec.json.decode(r.body)["event_id"] for r in got_runs] == [
        wanted_run["event_id"],
        markers[1]["event_id"],
    ]
    assert [msgspec.json.decode(r.body)["event_id"] for r in got_staging] == [
        wanted_deployment["event_id"],
        markers[2]["event_id"],
    ]
    ignored_ids = {e["event_id"] for e in ignored}
    assert not [r for r in receiver.received if r.headers["webhook-id"] in ignored_ids]


async def test_exactly_one_delivery_per_event_and_subscription_across_a_restart(
    client: httpx.AsyncClient, hooks: Instance, receiver: Receiver
) -> None:
    repository = _repo()
    first_url, second_url = receiver.path(), receiver.path()
    first = await subscribe(
        client, hooks, {"url": first_url, "event_types": ["pipeline.run.*"], "repository": repository}
    )
    second = await subscribe(client, hooks, {"url": second_url, "event_types": ["*"], "repository": repository})
    before = [await hooks.publish(_completed(repository)) for _ in range(20)]
    await receiver.wait(first_url, 5)

    # In a thread: the receivers live on this event loop and must keep answering meanwhile.
    await asyncio.to_thread(hooks.restart)  # mid-stream: some events delivered, some fanned out, some not yet read
    during = [await hooks.publish(_completed(repository)) for _ in range(20)]
    # The same event published again (a relay re-publishing after its own restart, past the
    # stream's duplicate window) must not become a second delivery either.
    again = await hooks.publish(_completed(repository), event_id=before[0]["event_id"])
    assert again["event_id"] == before[0]["event_id"]
    # Fanned out in stream order: once the marker's delivery exists, the copy above was seen.
    marker = await hooks.publish(_completed(repository))
    events = {e["event_id"] for e in [*before, *during, marker]}

    for url in (first_url, second_url):
        await receiver.wait(url, len(events))
    with psycopg.connect(hooks.database_url) as conn:
        rows = conn.execute(
            """SELECT subscription_id::text, event_id, count(*) FROM pipeline.subscription_deliveries
               WHERE subscription_id = ANY(%s::uuid[]) GROUP BY 1, 2""",
            ([first["id"], second["id"]],),
        ).fetchall()
    assert len(rows) == 2 * len(events)
    assert {count for _, _, count in rows} == {1}
    assert {event for _, event, _ in rows} == events
    for url in (first_url, second_url):
        ids = [r.headers["webhook-id"] for r in receiver.at(url)]
        assert sorted(ids) == sorted(events), "each event received exactly once"


async def test_redirects_are_not_followed(client: httpx.AsyncClient, hooks: Instance, receiver: Receiver) -> None:
    repository = _repo()
    elsewhere = receiver.path()
    url = receiver.path(("redirect", elsewhere), ("redirect", elsewhere))
    sub = await subscribe(client, hooks, {"url": url, "event_types": ["*"], "repository": repository})
    await hooks.publish(_completed(repository))
    await receiver.wait(url, 3)  # two redirects answered, then the third attempt succeeds
    (delivery,) = await _settled(client, hooks, sub["id"], 1)
    assert (delivery["status"], delivery["attempt"]) == ("succeeded", 3)
    assert receiver.at(elsewhere) == []


async def test_a_lost_consumer_is_created_again(client: httpx.AsyncClient, hooks: Instance, receiver: Receiver) -> None:
    """A NATS server that comes back without its store has no PIPELINE_WEBHOOKS: the service
    creates it again, and the events published meanwhile are still sent (once)."""
    from forge_common.nats import Names

    repository = _repo()
    url = receiver.path()
    sub = await subscribe(client, hooks, {"url": url, "event_types": ["*"], "repository": repository})
    names = Names(hooks.prefix)
    nc = await nats.connect(hooks.platform.nats_url)
    try:
        await nc.jetstream().delete_consumer(names.events_stream, names.durable("PIPELINE_WEBHOOKS"))
    finally:
        await nc.close()
    event = await hooks.publish(_completed(repository))
    (got,) = await receiver.wait(url, 1)
    assert got.headers["webhook-id"] == event["event_id"]
    (delivery,) = await _settled(client, hooks, sub["id"], 1)
    assert delivery["status"] == "succeeded"
