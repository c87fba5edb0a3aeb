"""Streams last until the token that opened them expires: at its ``exp`` the gateway ends every
streamed answer it relays (Server-Sent Events, followed logs, any ``text/event-stream``) cleanly,
gives the user's stream back, and records it; a token past its ``exp`` opens none.

The upstream here streams forever (an event or a log line every 0.1 s), so nothing but the
gateway ends an answer; tokens of the dev issuer live whole seconds, so ``exp`` is known."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import UPSTREAMS, start_gateway
from .test_auth import assert_401
from .tokens import claims, platform_kid
from .upstreams import Server

# How late after exp the client may see the end: the gateway's timer, a last write, a loaded box.
LATE = 1.0
# asyncio may fire a timer up to its clock's resolution early; the end is never earlier than this.
EARLY = 0.005


class Forever:
    """Answers that never end by themselves; which of them have ended on the upstream's side."""

    def __init__(self) -> None:
        self.ended: dict[str, asyncio.Event] = {}
        self.url = ""

    def ended_event(self, request_id: str) -> asyncio.Event:
        return self.ended.setdefault(request_id, asyncio.Event())

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def forever(request: web.Request) -> web.StreamResponse:
            sse = not request.path.endswith("/logs")
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream" if sse else "text/plain; charset=utf-8"}
            )
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                if request.query.get("split"):
                    # one event, then half of the next one, then silence: a cut falls inside it
                    await resp.write(b"id: 1\ndata: a\n\nid: 2\nda")
                    while request.transport is not None and not request.transport.is_closing():
                        await asyncio.sleep(0.05)  # (aiohttp does not cancel a handler whose client left)
                    return resp
                if sse:
                    await resp.write(b": subscribed\n\n")
                n = 0
                while True:
                    n += 1
                    await resp.write(f"id: {n}\ndata: tick {n}\n\n".encode() if sse else f"line {n}\n".encode())
                    await asyncio.sleep(0.1)
            finally:
                self.ended_event(request.headers.get("X-Request-Id", "")).set()

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"path": request.path})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/v1/events", forever)
        app.router.add_get("/v1/runs/{run}/events", forever)
        app.router.add_get("/v1/steps/{step}/logs", forever)
        app.router.add_get("/v1/releases/feed", forever)  # an event stream on a path of its own
        app.router.add_route("*", "/{tail:.*}", echo)
        return app


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Forever]:
    forever = Forever()
    server = await Server(forever.app()).start()
    forever.url = server.url
    yield forever
    await server.stop()


@pytest.fixture(scope="module")
async def gateway(platform: Platform, upstream: Forever) -> AsyncIterator[Process]:
    env = {f"FORGE_{name.upper()}_URL": upstream.url for name in UPSTREAMS}
    proc = await start_gateway(platform, {**env, "FORGE_USER_MAX_STREAMS": "2"})
    yield proc
    proc.stop()


def _token(platform: Platform, user: str) -> str:
    """A token for an hour."""
    return platform.token(user, "viewer")


def _user() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}@acme.io"


def _exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def _headers(token: str, request_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers


async def _rest(resp: httpx.Response) -> tuple[bytes, float]:
    """The rest of a streamed answer's body, its clean end awaited (a cut one raises), and when
    it ended."""
    body = b"".join([chunk async for chunk in resp.aiter_raw()])
    return body, time.time()


async def _to_the_end(client: httpx.AsyncClient, path: str, token: str, request_id: str) -> tuple[bytes, float, str]:
    """The whole body of a streamed answer, when it ended, its type."""
    async with client.stream("GET", path, headers=_headers(token, request_id)) as resp:
        assert resp.status_code == 200, await resp.aread()
        body, ended = await _rest(resp)
        return body, ended, resp.headers["content-type"]


def _ended_at_expiry(ended: float, token: str) -> None:
    exp = _exp(token)
    assert exp - EARLY <= ended <= exp + LATE, f"ended {ended - exp:+.3f} s from exp"


async def _log_lines(gateway: Process, request_id: str, count: int) -> list[dict[str, Any]]:
    """The gateway's log lines about ``request_id`` once there are ``count`` (access log lines
    are flushed in batches within 50 ms)."""
    assert gateway.log_path is not None
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in gateway.log_path.read_text().splitlines() if request_id in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


async def test_an_event_stream_ends_when_its_token_expires_and_gives_the_stream_back(
    platform: Platform, gateway: Process, upstream: Forever
) -> None:
    user, other = _user(), _user()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client, contextlib.AsyncExitStack() as stack:
        # another user's stream with a token for an hour
        kept = await stack.enter_async_context(
            client.stream("GET", "/v1/events", headers=_headers(_token(platform, other)))
        )
        assert kept.status_code == 200
        # two streams of one user with tokens that expire in 2-3 s: the cap (2) is reached
        short = [platform.token(user, "viewer", expires_in=3) for _ in range(2)]
        ids = [f"exp-{uuid.uuid4().hex}" for _ in short]
        streams = [
            await stack.enter_async_context(client.stream("GET", path, headers=_headers(token, rid)))
            for path, token, rid in zip(("/v1/events", "/v1/runs/r1/events"), short, ids, strict=True)
        ]
        assert [resp.status_code for resp in streams] == [200, 200]
        refused = await client.get("/v1/events", headers=_headers(_token(platform, user)))
        assert refused.status_code == 429
        assert refused.json()["error"]["details"]["stream_limit"] == 2

        for (body, ended), token in zip(await asyncio.gather(*map(_rest, streams)), short, strict=True):
            _ended_at_expiry(ended, token)
            # a clean end between two events, with a last comment that says why
            assert body.startswith(b": subscribed\n\nid: 1\ndata: tick 1\n\n")
            assert body.endswith(b"\n\n: token expired\n\n")
        # the service's side of each stream ended too
        for rid in ids:
            await asyncio.wait_for(upstream.ended_event(rid).wait(), 5)

        # the long-lived token's stream goes on past that expiry
        later = time.time() + 0.5
        async for chunk in kept.aiter_raw():
            if time.time() > later:
                assert b"data: tick" in chunk
                break
        else:
            raise AssertionError("the long-lived token's stream ended")

        # the user's streams were given back: up to the cap again, then 429
        fresh = _token(platform, user)
        for path in ("/v1/events", "/v1/runs/r2/events"):
            again = await stack.enter_async_context(client.stream("GET", path, headers=_headers(fresh)))
            assert again.status_code == 200
        assert (await client.get("/v1/events", headers=_headers(fresh))).status_code == 429

        metrics = (await client.get("/metrics")).text
    assert 'forge_http_requests_total{method="GET",route="/v1/events",service="gateway",status="200"}' in metrics

    # recorded: the access log line of a stream (200, its whole duration) and why it ended
    lines = await _log_lines(gateway, ids[0], 2)
    access = [line for line in lines if line["message"] == "http.request"]
    assert [(line["path"], line["status"], line["user"]) for line in access] == [("/v1/events", 200, user)]
    assert 1500 < access[0]["duration_ms"] < 3000 + 1000 * LATE
    expired = [line for line in lines if line["message"] == "gateway.stream_token_expired"]
    assert [(line["path"], line["user"], line["expires_at"]) for line in expired] == [
        ("/v1/events", user, _exp(short[0]))
    ]


async def test_every_streamed_answer_ends_at_expiry_and_none_opens_after_it(
    platform: Platform, gateway: Process
) -> None:
    user = _user()
    token = platform.token(user, "viewer", expires_in=3)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        log, feed, split = await asyncio.gather(
            # a followed log: its body ends, whole lines so far, nothing added
            _to_the_end(client, "/v1/steps/s1/logs?follow=true", token, uuid.uuid4().hex),
            # an event stream on a path the gateway knows nothing of: its content type says it
            _to_the_end(client, "/v1/releases/feed", token, uuid.uuid4().hex),
            # an event cut in its middle: no comment glued to it (the client drops the rest)
            _to_the_end(client, "/v1/runs/r1/events?split=1", token, uuid.uuid4().hex),
        )
        for _, ended, _ in (log, feed, split):
            _ended_at_expiry(ended, token)
        assert log[2].startswith("text/plain")
        assert log[0].startswith(b"line 1\nline 2\n")
        assert log[0].endswith(b"\n")
        assert b"expired" not in log[0]
        assert feed[0].endswith(b"\n\n: token expired\n\n")
        assert split[0] == b"id: 1\ndata: a\n\nid: 2\nda"

        # Past its exp the token is still accepted for the verifier's leeway (10 s), but a stream
        # it would open would end at once: 401, so the client asks for a new token at once.
        stale = platform.token(user, "viewer", expires_in=-2)
        plain = await client.get("/v1/runs/r1", headers=_headers(stale))
        assert plain.status_code == 200
        for path in ("/v1/events", "/v1/steps/s1/logs?follow=true", "/v1/releases/feed"):
            refused = await client.get(path, headers=_headers(stale))
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "authentication_failed"
            assert refused.json()["error"]["message"] == "token has expired"
            assert refused.headers["www-authenticate"] == 'Bearer realm="forge"'
        # Every stream has an end: a token without exp is refused, whatever it asks for.
        payload = claims(platform.issuer_url, user, ("viewer",))
        del payload["exp"]
        private_key = platform.keys._data()["private_key"]  # the dev issuer's own key
        endless = jwt.encode(payload, private_key, algorithm="RS256", headers={"kid": platform_kid(platform)})
        assert_401(await client.get("/v1/events", headers=_headers(endless)), 'missing the "exp" claim')

        # and those refusals held no stream of the user
        fresh = platform.token(user, "viewer")
        async with (
            client.stream("GET", "/v1/events", headers=_headers(fresh)) as first,
            client.stream("GET", "/v1/events", headers=_headers(fresh)) as second,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
