"""``GET /v1/steps/{id}/logs`` through the gateway: whole, by range, and followed while it runs."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from .conftest import Lane, SseReader, project_files


def _step(run: dict[str, Any], name: str) -> dict[str, Any]:
    for phase in run["phases"]:
        for task in phase["tasks"]:
            for step in task["steps"]:
                if step["name"] == name:
                    return dict(step)
    raise AssertionError(f"no step {name}")


async def _wait_finished(client: httpx.AsyncClient, lane: Lane, run_id: str) -> dict[str, Any]:
    """The run's final tree, once its event stream has ended."""
    async with client.stream("GET", f"{lane.gateway_url}/v1/runs/{run_id}/events", headers=lane.headers("viewer")) as r:
        await SseReader(r).rest()
    return await lane.get_run(client, run_id)


async def _wait_step(client: httpx.AsyncClient, lane: Lane, run_id: str, name: str, status: str) -> str:
    """The step's id once the run's event stream says it has ``status``."""
    headers = {**lane.headers("viewer"), "Last-Event-ID": "0"}
    async with client.stream("GET", f"{lane.gateway_url}/v1/runs/{run_id}/events", headers=headers) as r:
        reader = SseReader(r)
        while (event := await reader.next()) is not None:
            data = event.json()
            if event.event == "step" and data["name"] == name and data["status"] == status:
                return str(data["id"])
    raise AssertionError(f"step {name} never became {status}")


async def test_whole_log_and_ranges(lane: Lane, client: httpx.AsyncClient) -> None:
    repository, sha = lane.push(project_files({"count": "for i in 1 2 3 4 5; do echo line $i; done", "quiet": "true"}))
    run = await _wait_finished(client, lane, await lane.create_run(client, repository, sha))
    step = _step(run, "count")
    url = f"{lane.gateway_url}/v1/steps/{step['id']}/logs"
    viewer = lane.headers("viewer")

    whole = await client.get(url, headers=viewer)
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("text/plain")
    assert whole.headers["accept-ranges"] == "bytes"
    text = "".join(f"line {i}\n" for i in range(1, 6))
    assert whole.text == text

    part = await client.get(url, headers={**viewer, "Range": "bytes=7-13"})
    assert part.status_code == 206
    assert part.text == text[7:14]
    assert part.headers["content-range"] == f"bytes 7-13/{len(text)}"
    tail = await client.get(url, headers={**viewer, "Range": "bytes=-7"})
    assert tail.status_code == 206
    assert tail.text == "line 5\n"
    assert tail.headers["content-range"] == f"bytes {len(text) - 7}-{len(text) - 1}/{len(text)}"
    past = await client.get(url, headers={**viewer, "Range": f"bytes={len(text) + 10}-"})
    assert past.status_code == 416
    assert past.json()["error"]["details"]["field"] == "Range"
    for bad in ("lines=1-2", "bytes=5-2", "bytes=1-2,4-5"):
        resp = await client.get(url, headers={**viewer, "Range": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["details"]["field"] == "Range"

    # A step that printed nothing has an empty log; a followed finished step ends at once.
    quiet = await client.get(f"{lane.gateway_url}/v1/steps/{_step(run, 'quiet')['id']}/logs", headers=viewer)
    assert quiet.status_code == 200
    assert quiet.text == ""
    followed = await client.get(url, params={"follow": "true"}, headers=viewer)
    assert followed.status_code == 200
    assert followed.text == text

    # logs_url keeps working for direct S3 access.
    direct = await client.get(step["logs_url"])
    assert direct.text == text


async def test_follow_streams_a_running_step_and_ends_with_it(lane: Lane, client: httpx.AsyncClient) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    repository, sha = lane.push(
        project_files({"build": f"echo compiling; {lane.wait_for(gate)}; echo linked; echo done"})
    )
    run_id = await lane.create_run(client, repository, sha)
    step_id = await _wait_step(client, lane, run_id, "build", "running")
    url = f"{lane.gateway_url}/v1/steps/{step_id}/logs"
    received = ""
    async with client.stream("GET", url, params={"follow": "true"}, headers=lane.headers("viewer")) as resp:
        assert resp.status_code == 200
        chunks = resp.aiter_text()
        # The first line arrives while the step is still running (it waits for the gate).
        async for chunk in chunks:
            received += chunk
            if "compiling\n" in received:
                break
        run = await lane.get_run(client, run_id)
        assert _step(run, "build")["status"] == "running"
        lane.signal(gate)
        async for chunk in chunks:
            received += chunk
    # The stream ended by itself once the step finished, with the whole log.
    assert received == "compiling\nlinked\ndone\n"
    run = await _wait_finished(client, lane, run_id)
    assert _step(run, "build")["status"] == "success"

    unknown = await client.get(f"{lane.gateway_url}/v1/steps/{uuid.uuid4()}/logs", headers=lane.headers("viewer"))
    assert unknown.status_code == 404
    bad = await client.get(url, params={"follow": "maybe"}, headers=lane.headers("viewer"))
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "follow"
