"""Through the gateway, a stream ends when the token that opened it expires (its ``exp``); a
client that reconnects with a new token and ``Last-Event-ID`` (or ``Range``, for a followed
log) loses nothing that happened in between, and a long-lived token's stream goes on.

Tokens live 2-3 s here (``exp`` is a whole second); each wait is for the stream's end itself."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt

from .conftest import TERMINAL, Lane, SseReader, _git, project_files
from .test_logs import _wait_finished, _wait_step

LATE = 1.0  # the end is seen at most this long after exp
EARLY = 0.005  # ... and not before it (asyncio's timers may fire a clock resolution early)


def _exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def _bearer(token: str, last_event_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


def _ended_at_expiry(ended: float, token: str) -> None:
    exp = _exp(token)
    assert exp - EARLY <= ended <= exp + LATE, f"ended {ended - exp:+.3f} s from exp"


def _next_commit(lane: Lane, repository: str) -> str:
    """Another commit on main of a repository ``lane.push`` made."""
    work = lane.root / "work" / repository
    (work / "api" / "app.txt").write_text(f"{uuid.uuid4().hex}\n")
    _git("commit", "-q", "-am", "next", cwd=work)
    _git("push", "-q", str(lane.repos / f"{repository}.git"), "HEAD:refs/heads/main", cwd=work)
    return _git("rev-parse", "HEAD", cwd=work).strip()


async def test_the_event_feed_ends_at_expiry_and_a_new_token_resumes_it(lane: Lane, client: httpx.AsyncClient) -> None:
    # a gateway of its own: at most 2 streams per user, to see the user's stream given back
    gateway = lane.gateway({"FORGE_USER_MAX_STREAMS": "2"})
    repository, sha = lane.push(project_files({"one": "echo hi"}))
    url = f"{gateway}/v1/events?types=pipeline.run.created&repository={repository}"
    user = f"feed-{uuid.uuid4().hex[:6]}@acme.io"
    short = lane.platform.token(user, "viewer", expires_in=3)
    witness_token = lane.platform.token("witness@acme.io", "viewer")  # an hour
    async with (
        client.stream("GET", url, headers=_bearer(witness_token)) as witness_resp,
        client.stream("GET", url, headers=_bearer(short)) as resp,
    ):
        witness, reader = SseReader(witness_resp), SseReader(resp)
        assert await witness.next_comment() == "subscribed"
        assert await reader.next_comment() == "subscribed"
        first_run = await lane.create_run(client, repository, sha)
        first = await reader.next()
        assert first is not None
        assert first.json()["data"]["run_id"] == first_run

        # nothing else is published for this repository: the stream ends at exp, cleanly
        assert await reader.next() is None
        _ended_at_expiry(time.time(), short)
        assert reader.comments[-1] == "token expired"

        # published while the client is away
        second_run = await lane.create_run(client, repository, _next_commit(lane, repository))

        # a new token and the last id: the event is there; the user's expired stream was given
        # back, so two streams are open again (the cap) and a third is refused
        fresh = lane.platform.token(user, "viewer")
        async with (
            client.stream("GET", url, headers=_bearer(fresh, first.id)) as again,
            client.stream("GET", url, headers=_bearer(fresh)) as other,
        ):
            assert (again.status_code, other.status_code) == (200, 200)
            assert (await client.get(url, headers=_bearer(fresh))).status_code == 429
            resumed = await SseReader(again).next()
        assert resumed is not None
        assert resumed.json()["data"]["run_id"] == second_run
        assert int(resumed.id) > int(first.id)

        # the long-lived token's stream stayed open throughout and saw both
        seen = [await witness.next(), await witness.next()]
        assert [e.json()["data"]["run_id"] if e else None for e in seen] == [first_run, second_run]
        assert "token expired" not in witness.comments


async def test_a_run_stream_ends_at_expiry_and_a_new_token_resumes_it(lane: Lane, client: httpx.AsyncClient) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    repository, sha = lane.push(project_files({"build": f"echo start; {lane.wait_for(gate)}; echo done"}))
    run_id = await lane.create_run(client, repository, sha)
    url = f"{lane.gateway_url}/v1/runs/{run_id}/events"
    short = lane.platform.token("runs-short@acme.io", "viewer", expires_in=3)
    async with client.stream("GET", url, headers=lane.headers("viewer")) as witness_resp:
        witness = SseReader(witness_resp)
        async with client.stream("GET", url, headers=_bearer(short)) as resp:
            reader = SseReader(resp)
            received = await reader.rest()  # until the gateway ends it
            _ended_at_expiry(time.time(), short)
        assert reader.comments[-1] == "token expired"
        assert received[0].event == "run"
        assert received[0].json()["id"] == run_id
        assert (await lane.get_run(client, run_id))["status"] not in TERMINAL

        # the run ends while the client is away
        lane.signal(gate)
        await _wait_finished(client, lane, run_id)

        # a new token and the last id: every change since, then the stream's own end
        fresh = lane.platform.token("runs-short@acme.io", "viewer")
        async with client.stream("GET", url, headers=_bearer(fresh, received[-1].id)) as resp:
            rest = await SseReader(resp).rest()
        # the witness (a token for an hour) read the whole run on one connection
        everything = await witness.rest()

    assert rest, "nothing after the last event"
    assert (rest[-1].event, rest[-1].json()["status"]) == ("run", "success")
    start = int(received[0].id)
    changes = [(e.id, e.event, e.data) for e in everything[1:] if int(e.id) > start]
    assert [(e.id, e.event, e.data) for e in received[1:] + rest] == changes


async def test_a_followed_log_ends_at_expiry_and_resumes_by_range(lane: Lane, client: httpx.AsyncClient) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    repository, sha = lane.push(project_files({"build": f"echo first; {lane.wait_for(gate)}; echo second"}))
    run_id = await lane.create_run(client, repository, sha)
    step_id = await _wait_step(client, lane, run_id, "build", "running")
    url = f"{lane.gateway_url}/v1/steps/{step_id}/logs?follow=true"
    short = lane.platform.token("logs-short@acme.io", "viewer", expires_in=3)
    async with client.stream("GET", url, headers=_bearer(short)) as resp:
        assert resp.headers["x-step-status"] == "running"
        log = b"".join([chunk async for chunk in resp.aiter_raw()])  # a clean end, no error
    _ended_at_expiry(time.time(), short)
    # what was written by then, and nothing added: the end looks like the log's own
    assert log == b"first\n"

    # the step goes on and ends; a new token asks from the bytes received
    lane.signal(gate)
    fresh = _bearer(lane.platform.token("logs-short@acme.io", "viewer"))
    while True:
        async with client.stream("GET", url, headers={**fresh, "Range": f"bytes={len(log)}-"}) as resp:
            assert resp.status_code == 200
            finished = resp.headers["x-step-status"] in TERMINAL
            more = b"".join([chunk async for chunk in resp.aiter_raw()])
        log += more
        if finished and not more:
            break
    assert log == b"first\nsecond\n"
