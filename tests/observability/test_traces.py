"""One trace per run, across processes: the client's ``traceparent`` reaches the gateway, the
pipeline service's API, the dispatcher that drives the run (a background task that reads the
trace context stored with the run), the worker that runs its jobs (``traceparent`` in the
NATS job headers), the status reports it sends back, the release service its release job calls,
and the events the run causes (``traceparent`` stored with the outbox row, published as a NATS
header). Every process exports its spans to a real OTLP/HTTP receiver."""

from __future__ import annotations

import secrets

import httpx
import nats
from nats.js.api import DeliverPolicy

from forge_common.nats import Names
from forge_dev.testing import wait_for_event

from .conftest import Observed
from .otlp import ReceivedSpan


def _has(spans: list[ReceivedSpan], service: str, scope: str | None = None, name: str | None = None) -> bool:
    return any(
        s.service == service and (scope is None or s.scope == scope) and (name is None or s.name == name) for s in spans
    )


async def test_one_trace_id_from_gateway_to_worker_and_release(observed: Observed, gateway: httpx.AsyncClient) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    result = await observed.run_pipeline(gateway, headers={"traceparent": traceparent})
    run_id = result["run"]["id"]
    created = await wait_for_event(
        observed.platform, "release.created", lambda e: e["data"]["repository"] == result["repository"], timeout=60
    )

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return (
            _has(mine, "forge-gateway", "forge.gateway")
            and _has(mine, "forge-pipeline", "forge.http", "POST /v1/runs")
            and _has(mine, "forge-pipeline", "forge.dispatcher", "dispatch run")
            and _has(mine, "forge-worker", "forge.worker", "discovery job")
            and _has(mine, "forge-worker", "forge.worker", "ci job")
            and _has(mine, "forge-worker", "forge.worker", "step")
            and _has(mine, "forge-worker", "forge.worker", "release job")
            and _has(mine, "forge-release", "forge.http", "POST /v1/releases")
        )

    spans = await observed.receiver.wait_for(complete, timeout=60)
    mine = [s for s in spans if s.trace_id == trace_id]

    # The dispatcher's spans are the run's: they name it.
    dispatch = [s for s in mine if s.scope == "forge.dispatcher" and s.name == "dispatch run"]
    assert [s.attributes["forge.run_id"] for s in dispatch] == [run_id]
    # Worker job spans are children of the dispatcher's publish spans (the job's headers).
    by_id = {s.span_id: s for s in mine}
    for job in (s for s in mine if s.scope == "forge.worker" and s.name.endswith(" job")):
        parent = by_id.get(job.parent_span_id)
        if job.name == "release job":
            # Queued through the outbox in the dispatcher's transaction; its context was stored with it.
            assert parent is not None, job
            assert parent.name == "dispatch run", job
        else:
            assert parent is not None, job
            assert parent.name.endswith("job publish"), job
            assert parent.scope == "forge.dispatcher"
    # The worker's status reports arrive at the pipeline service in the same trace.
    assert any(s.service == "forge-pipeline" and s.scope == "forge.http" and "/report" in s.name for s in mine), {
        s.name for s in mine
    }
    # A step's processes get the step span's context (TRACEPARENT), as its log shows.
    steps = {s.attributes["forge.step"]: s for s in mine if s.name == "step"}
    assert set(steps) == {"unit", "package"}
    assert all(by_id[s.parent_span_id].name == "ci job" for s in steps.values())
    unit = next(t["steps"][0] for p in result["run"]["phases"] if p["name"] == "test" for t in p["tasks"])
    log = await gateway.get(unit["logs_url"])
    assert log.status_code == 200, log.text
    assert f"trace 00-{trace_id}-{steps['unit'].span_id}-01" in log.text, log.text
    # Every span of the trace is from one of the platform's processes (no stray trace ids).
    assert {s.service for s in mine} <= {"forge-gateway", "forge-pipeline", "forge-worker", "forge-release"}

    # The events carry the trace too, in their NATS headers: the run's and the release's.
    headers = await _event_headers(observed, "release.created", created["event_id"])
    assert headers.get("traceparent", "").split("-")[1] == trace_id, headers
    completed = await wait_for_event(
        observed.platform, "pipeline.run.completed", lambda e: e["data"]["run_id"] == run_id
    )
    headers = await _event_headers(observed, "pipeline.run.completed", completed["event_id"])
    assert headers.get("traceparent", "").split("-")[1] == trace_id, headers


async def _event_headers(observed: Observed, event_type: str, event_id: str) -> dict[str, str]:
    names = Names(observed.platform.nats_prefix)
    nc = await nats.connect(observed.platform.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            names.event_subject(event_type),
            stream=names.events_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        while True:
            msg = await sub.next_msg(timeout=10)
            if (msg.headers or {}).get("Nats-Msg-Id") == event_id:
                await sub.unsubscribe()
                return dict(msg.headers or {})
    finally:
        await nc.close()
