"""The console's SSE parser (static/js/sse.js), run in the browser that uses it."""

from __future__ import annotations

from typing import Any

from forge_dev.testing import Platform

# Feeds each case's chunks to a fresh SseParser; resolves with the events of every case.
_RUN_CASES = """
const [cases, done] = arguments;
const app = document.querySelector('script[type=module]').src;
import(app.replace(/js\\/app\\.js$/, 'js/sse.js')).then(({ SseParser }) => {
  done(cases.map((chunks) => {
    const parser = new SseParser();
    const events = chunks.flatMap((chunk) => parser.feed(chunk));
    return { events, lastEventId: parser.lastEventId };
  }));
}, (err) => done(String(err)));
"""


def test_sse_parser_follows_the_event_stream_rules(platform: Platform, browser: Any) -> None:
    browser.get(f"{platform.gateway_url}/login")
    cases = [
        # one event; the first event of a run's stream carries the tree
        ['event: run\nid: 1\ndata: {"id":"r","status":"running"}\n\n'],
        # CRLF split between chunks, a field name split between chunks
        ["event: step\r", "\nid: 7\r\nda", 'ta: {"id":"s"}\r\n\r\n'],
        # multi-line data, a comment (heartbeat), a value without the optional space
        [": keep-alive\n\ndata:line one\ndata: line two\n\n"],
        # the id persists across events; the event type resets to "message"
        ["id: 9\nevent: task\ndata: a\n\ndata: b\n\n"],
        # a byte order mark, lone CRs as line ends (a final CR waits: it may start a CRLF), a bare field
        ["\ufeffdata: x\rdata\r\r", "\n"],
        # an event without data is not dispatched; an incomplete event waits for its blank line
        ["event: phase\n\ndata: pending"],
        # a stream that ends inside an event (as the gateway ends one when its token expires):
        # the id to resume after is the last complete event's, so the cut one comes again
        ["id: 3\ndata: a\n\nid: 4\nda"],
    ]
    results = browser.execute_async_script(_RUN_CASES, cases)
    assert not isinstance(results, str), results
    events = [[(e["event"], e["data"], e["id"]) for e in r["events"]] for r in results]
    assert events[0] == [("run", '{"id":"r","status":"running"}', "1")]
    assert events[1] == [("step", '{"id":"s"}', "7")]
    assert events[2] == [("message", "line one\nline two", "")]
    assert events[3] == [("task", "a", "9"), ("message", "b", "9")]
    assert events[4] == [("message", "x\n", "")]
    assert events[5] == []
    assert results[3]["lastEventId"] == "9"
    assert events[6] == [("message", "a", "3")]
    assert results[6]["lastEventId"] == "3"
