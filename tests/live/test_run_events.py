"""``GET /v1/runs/{id}/events`` through the gateway: a run watched from pending to success."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from .conftest import Event, Lane, SseReader, project_files


def _statuses(events: list[Event], kind: str) -> dict[str, list[str]]:
    """id -> the statuses its events carried, in order."""
    out: dict[str, list[str]] = {}
    for event in events:
        if event.event == kind:
            data = event.json()
            out.setdefault(data["id"], []).append(data["status"])
    return out


async def _open(client: httpx.AsyncClient, lane: Lane, run_id: str, last_event_id: str | None = None) -> Any:
    headers = {**lane.headers("viewer"), "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return client.stream("GET", f"{lane.gateway_url}/v1/runs/{run_id}/events", headers=headers)


async def test_a_run_and_each_step_go_pending_running_success(lane: Lane, client: httpx.AsyncClient) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    repository, sha = lane.push(
        project_files({"first": f"echo one; {lane.wait_for(gate)}", "second": "echo two"}, phases=("test", "build"))
    )
    run_id = await lane.create_run(client, repository, sha)

    # Last-Event-ID 0: the run's whole history (the orchestrator may have started it already).
    async with await _open(client, lane, run_id, "0") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(resp)
        seen: list[Event] = []
        # Watch until the first step is running, then let it finish.
        while True:
            event = await reader.next()
            assert event is not None, "the stream ended before the first step ran"
            seen.append(event)
            data = event.json()
            if event.event == "step" and data["name"] == "first" and data["status"] == "running":
                break
        lane.signal(gate)
        seen.extend(await reader.rest())

    # Every event has an increasing numeric id.
    ids = [int(e.id) for e in seen]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

    assert _statuses(seen, "run")[run_id] == ["pending", "running", "success"]
    steps = _statuses(seen, "step")
    assert len(steps) == 4  # two steps in each of two phases
    for statuses in steps.values():
        assert statuses == ["pending", "running", "success"], steps
    for kind in ("phase", "task"):
        for statuses in _statuses(seen, kind).values():
            assert statuses == ["pending", "running", "success"], (kind, statuses)
    step_event = next(e.json() for e in seen if e.event == "step" and e.json()["status"] == "success")
    assert step_event["exit_code"] == 0
    assert step_event["started_at"]
    assert step_event["completed_at"]
    final = await lane.get_run(client, run_id)
    assert final["status"] == "success"

    # Resuming after any event replays exactly what followed it.
    middle = seen[len(seen) // 2]
    async with await _open(client, lane, run_id, middle.id) as resp:
        replay = await SseReader(resp).rest()
    assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in seen[len(seen) // 2 + 1 :]]

    # Without Last-Event-ID a watch begins with the whole tree; for a finished run, that is all.
    async with await _open(client, lane, run_id) as resp:
        after = await SseReader(resp).rest()
    assert len(after) == 1
    assert after[0].event == "run"
    assert after[0].json() == final
    assert int(after[0].id) == ids[-1]


async def test_resume_after_a_disconnect_loses_nothing(lane: Lane, client: httpx.AsyncClient) -> None:
    gates = [f"g{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    steps = {f"s{i}": f"echo {i}; {lane.wait_for(gate)}" for i, gate in enumerate(gates)}
    repository, sha = lane.push(project_files(steps))
    run_id = await lane.create_run(client, repository, sha)

    # A witness watches the whole run on one connection.
    async with await _open(client, lane, run_id) as witness_resp:
        witness = SseReader(witness_resp)
        # The watcher under test: reads until s0 runs, then drops the connection.
        received: list[Event] = []
        async with await _open(client, lane, run_id) as resp:
            reader = SseReader(resp)
            while True:
                event = await reader.next()
                assert event is not None
                received.append(event)
                data = event.json()
                if event.event == "step" and data["name"] == "s0" and data["status"] == "running":
                    break
        # While it is away, the run moves on: s0 and s1 finish.
        lane.signal(gates[0])
        lane.signal(gates[1])
        # Resume with the last id it saw, let the run finish, read to the end.
        async with await _open(client, lane, run_id, received[-1].id) as resp:
            reader = SseReader(resp)
            lane.signal(gates[2])
            received.extend(await reader.rest())
        everything = await witness.rest()

    # Both connections began with the tree; after it, the interrupted watcher saw exactly the
    # changes the witness saw.
    start = int(received[0].id)
    witness_changes = [(e.id, e.event, e.data) for e in everything[1:] if int(e.id) > start]
    assert [(e.id, e.event, e.data) for e in received[1:]] == witness_changes
    assert _statuses(received, "run")[run_id][-1] == "success"


async def test_refusals_are_envelopes(lane: Lane, client: httpx.AsyncClient) -> None:
    url = f"{lane.gateway_url}/v1/runs"
    missing = await client.get(f"{url}/{uuid.uuid4()}/events", headers=lane.headers("viewer"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_not_found"
    bad = await client.get(f"{url}/not-a-uuid/events", headers=lane.headers("viewer"))
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "id"
    anonymous = await client.get(f"{url}/{uuid.uuid4()}/events")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"]
    repository, sha = lane.push(project_files({"one": "true"}))
    run_id = await lane.create_run(client, repository, sha)
    wrong_id = await client.get(
        f"{url}/{run_id}/events", headers={**lane.headers("viewer"), "Last-Event-ID": "yesterday"}
    )
    assert wrong_id.status_code == 400
    assert wrong_id.json()["error"]["details"]["field"] == "Last-Event-ID"


async def test_a_timeout_ends_the_stream_and_last_event_id_goes_on(lane: Lane, client: httpx.AsyncClient) -> None:
    """``?timeout=`` bounds a watch (as Kubernetes' timeoutSeconds): the stream ends cleanly while
    the run is still going, and a reconnect with ``Last-Event-ID`` continues where it ended."""
    gate = f"t-{uuid.uuid4().hex[:6]}"
    repository, sha = lane.push(project_files({"wait": lane.wait_for(gate)}))
    run_id = await lane.create_run(client, repository, sha)
    url = f"{lane.gateway_url}/v1/runs/{run_id}/events"
    async with client.stream("GET", url, params={"timeout": "1"}, headers=lane.headers("viewer")) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(resp)
        first = await reader.rest()
    assert first[0].event == "run"
    assert reader.comments[-1] == "timeout"
    assert _statuses(first, "run")[run_id][-1] not in ("success", "failed", "cancelled")

    lane.signal(gate)
    async with await _open(client, lane, run_id, first[-1].id) as resp:
        rest = await SseReader(resp).rest()
    assert _statuses(rest, "run")[run_id][-1] == "success"
    assert all(int(e.id) > int(first[-1].id) for e in rest)

    for value in ("0", "-1", "1.5", "86401", "soon"):
        refused = await client.get(url, params={"timeout": value}, headers=lane.headers("viewer"))
        assert refused.status_code == 400, (value, refused.text)
        assert refused.json()["error"]["details"]["field"] == "timeout"
