"""``GET /v1/events`` through the gateway: the platform's events as they are published."""

from __future__ import annotations

import httpx

from .conftest import Lane, SseReader, project_files


def _feed(client: httpx.AsyncClient, lane: Lane, query: str, last_event_id: str | None = None) -> object:
    headers = lane.headers("viewer")
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return client.stream("GET", f"{lane.gateway_url}/v1/events?{query}", headers=headers)


async def test_run_completed_of_a_run_started_after_connecting(lane: Lane, client: httpx.AsyncClient) -> None:
    repository, sha = lane.push(project_files({"one": "echo hi"}))
    other, other_sha = lane.push(project_files({"one": "echo other"}))
    query = f"types=pipeline.run.created,pipeline.run.completed&repository={repository}"
    async with _feed(client, lane, query) as resp:  # type: ignore[attr-defined]
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(resp)
        assert await reader.next_comment() == "subscribed"
        # A run of another repository first: filtered out.
        await lane.create_run(client, other, other_sha)
        run_id = await lane.create_run(client, repository, sha)
        created = await reader.next()
        completed = await reader.next()
    assert created is not None
    assert completed is not None
    assert created.event == "pipeline.run.created"
    envelope = created.json()
    assert envelope["event_type"] == "pipeline.run.created"
    assert envelope["data"]["run_id"] == run_id
    assert envelope["event_id"]
    assert envelope["timestamp"]
    assert completed.event == "pipeline.run.completed"
    assert completed.json()["data"]["run_id"] == run_id
    assert int(completed.id) > int(created.id)

    # Resuming after the created event delivers the completed one again, from the stream.
    async with _feed(client, lane, query, created.id) as resp:  # type: ignore[attr-defined]
        reader = SseReader(resp)
        again = await reader.next()
    assert again is not None
    assert (again.id, again.data) == (completed.id, completed.data)


async def test_bad_filters_are_refused(lane: Lane, client: httpx.AsyncClient) -> None:
    url = f"{lane.gateway_url}/v1/events"
    for query, field in (
        ("types=pipeline.run.exploded", "types"),
        ("types=", "types"),
        ("repository=not-a-repository", "repository"),
        ("repository=../etc", "repository"),
        ("repository=acme/..", "repository"),
        ("repository=-acme/shop", "repository"),
    ):
        resp = await client.get(f"{url}?{query}", headers=lane.headers("viewer"))
        assert resp.status_code == 400, (query, resp.text)
        assert resp.json()["error"]["details"]["field"] == field
    resp = await client.get(url, headers={**lane.headers("viewer"), "Last-Event-ID": "-3"})
    assert resp.status_code == 400
    assert resp.json()["error"]["details"]["field"] == "Last-Event-ID"
    assert (await client.get(url)).status_code == 401


async def test_a_timeout_ends_the_feed(lane: Lane, client: httpx.AsyncClient) -> None:
    """The feed does not end by itself; ``?timeout=`` ends it cleanly after that many seconds."""
    async with _feed(client, lane, "timeout=1&types=release.created") as resp:  # type: ignore[attr-defined]
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(resp)
        assert await reader.next_comment() == "subscribed"
        assert await reader.next() is None  # the stream ended
    assert reader.comments[-1] == "timeout"
    for value in ("0", "86401", "forever"):
        refused = await client.get(f"{lane.gateway_url}/v1/events?timeout={value}", headers=lane.headers("viewer"))
        assert refused.status_code == 400, (value, refused.text)
        assert refused.json()["error"]["details"]["field"] == "timeout"
