"""Every metric the dashboards and alerts query exists on some process's ``/metrics`` once a
pipeline has run, and the spec's metrics count what happened.

The queries are read from where operators get them: ``deploy/grafana/*.json``,
``deploy/prometheus/forge-alerts.yaml``, and the umbrella chart rendered with its dashboards
ConfigMaps and PrometheusRule switched on (Helm's own engine, as ``make lint`` renders it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import nats
from prometheus_client.parser import text_string_to_metric_families

from forge_common import jobs
from forge_common.nats import Names
from forge_dev.testing import wait_for_event

from .conftest import APPROVER, DEVELOPER, Observed

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("forge_deploy_check_metrics", ROOT / "deploy" / "check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()


def queried_metrics() -> dict[str, set[str]]:
    """metric name (histogram suffixes kept) -> where it is queried."""
    where: dict[str, set[str]] = {}

    def note(expr: str, origin: str) -> None:
        for name in check.METRIC.findall(expr):
            where.setdefault(name, set()).add(origin)

    for path in sorted((ROOT / "deploy" / "grafana").glob("*.json")):
        for panel in json.loads(path.read_text()).get("panels", []):
            for target in panel.get("targets", []):
                note(target.get("expr", ""), path.name)
    for rule in check.alert_rules():
        note(rule["expr"], f"forge-alerts.yaml: {rule['alert']}")
    rendered = check.render(check.HELM / "forge", check.all_on("forge"))
    rules = [d for d in rendered if d["kind"] == "PrometheusRule"]
    boards = [
        d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert rules, "the umbrella chart rendered no PrometheusRule"
    assert len(boards) >= 4, "the umbrella chart rendered fewer than four dashboard ConfigMaps"
    for doc in rules:
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                note(rule["expr"], f"PrometheusRule: {rule.get('alert')}")
    for doc in boards:
        for text in doc["data"].values():
            for panel in json.loads(text).get("panels", []):
                for target in panel.get("targets", []):
                    note(target.get("expr", ""), f"ConfigMap {doc['metadata']['name']}")
    return where


async def scrape(client: httpx.AsyncClient, observed: Observed) -> dict[str, Samples]:
    """process -> sample name -> [(labels, value)]."""
    out: dict[str, Samples] = {}
    for process, url in observed.metrics_urls().items():
        resp = await client.get(url)
        assert resp.status_code == 200, f"{process}: {resp.status_code}"
        samples: Samples = {}
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        out[process] = samples
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, []) if all(lbl.get(k) == want for k, want in labels.items()))


async def test_every_dashboard_and_alert_metric_is_exposed_after_a_run(
    observed: Observed, gateway: httpx.AsyncClient
) -> None:
    platform = observed.platform
    async with httpx.AsyncClient(timeout=30.0) as plain:
        before = await scrape(plain, observed)

    result = await observed.run_pipeline(gateway)
    run = result["run"]
    created = await wait_for_event(
        platform, "release.created", lambda e: e["data"]["repository"] == result["repository"], timeout=60
    )
    release_id = created["data"]["release_id"]
    developer = platform.headers(DEVELOPER, "developer")
    resp = await gateway.post(
        "/v1/deployments", json={"release_id": release_id, "environment": "dev"}, headers=developer
    )
    assert resp.status_code == 201, resp.text
    deployment_id = resp.json()["id"]
    await wait_for_event(
        platform, "deployment.completed", lambda e: e["data"]["deployment_id"] == deployment_id, timeout=30
    )
    resp = await gateway.post(
        "/v1/approvals",
        json={"release_id": release_id, "environment": "production", "justification": "dev looks good"},
        headers=platform.headers(APPROVER, "approver"),
    )
    assert resp.status_code == 201, resp.text
    # A client mistake: the error metrics count it (the API dashboard's 4xx panel).
    unknown = await gateway.get(f"/v1/runs/{uuid.uuid4()}", headers=platform.headers(DEVELOPER, "viewer"))
    assert unknown.status_code == 404, unknown.text

    async with httpx.AsyncClient(timeout=30.0) as plain:
        after = await scrape(plain, observed)

    exposed = {name: process for process, samples in after.items() for name in samples}
    missing = {name: sorted(origins) for name, origins in queried_metrics().items() if name not in exposed}
    assert not missing, f"queried by dashboards/alerts but on no /metrics: {missing}"

    # The spec's metrics count what just happened (differences: other tests share the platform).
    def delta(process: str, name: str, **labels: str) -> float:
        return value(after[process], name, **labels) - value(before[process], name, **labels)

    assert delta("pipeline", "forge_pipeline_runs_total", status="success") == 1
    assert delta("pipeline", "forge_pipeline_run_duration_seconds_count", status="success") == 1
    assert delta("pipeline", "forge_pipeline_run_duration_seconds_sum", status="success") > 0
    phases = {p["name"] for p in run["phases"]}
    for phase in phases:
        assert delta("pipeline", "forge_pipeline_phase_duration_seconds_count", phase=phase, status="success") == 1
    assert delta("release", "forge_releases_created_total") == 1
    assert delta("deployment", "forge_deployments_total", environment="dev", status="active") == 1
    assert delta("approval", "forge_approvals_total", action="approved") == 1
    assert delta("worker", "forge_worker_jobs_total", job_type="ci", status="success") == len(phases)
    # Nothing is left in the queue, and the gauges say so per job type; every slot is idle again.
    for job_type in ("discovery", "ci", "artifact", "release"):
        assert value(after["pipeline"], "forge_jobs_pending", job_type=job_type) == 0
    assert value(after["worker"], "forge_worker_slots", state="busy") == 0
    assert value(after["worker"], "forge_worker_slots", state="idle") > 0
    assert value(after["pipeline"], "forge_outbox_pending", service="pipeline") >= 0
    for process in ("gateway", "pipeline"):
        assert delta(process, "forge_http_request_errors_total", status="404") == 1, process
    # Labels stay bounded: route templates, never raw paths with ids.
    routes = {lbl["route"] for lbl, _ in after["pipeline"]["forge_http_requests_total"]}
    assert not any(run["id"] in route for route in routes), routes


BLOCKING_PROJECT = """
name = "api"
[[phases.test.steps]]
name = "unit"
action = "shell"
run = "while [ ! -e {marker} ]; do sleep 0.05; done; echo failing on purpose; exit 3"
[[phases.build.steps]]
name = "package"
action = "shell"
run = "echo never runs"
"""


async def _poll_metric(
    client: httpx.AsyncClient, url: str, name: str, labels: dict[str, str], want: float, timeout: float = 30.0
) -> None:
    """Scrape ``url`` until the sample has the value (a gauge has no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = (await client.get(url)).text
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        seen = value(samples, name, **labels)
        if seen == want:
            return
        assert loop.time() < deadline, f"{name}{labels} stayed {seen}, expected {want}"
        await asyncio.sleep(0.05)


async def test_queue_lag_busy_slots_and_a_failed_run_show_in_the_metrics(
    observed: Observed, gateway: httpx.AsyncClient
) -> None:
    platform = observed.platform
    urls = observed.metrics_urls()
    names = Names(platform.nats_prefix)
    async with httpx.AsyncClient(timeout=30.0) as plain:
        before = await scrape(plain, observed)

        # A job of a type no worker here pulls (artifact) waits: it is the consumer's lag.
        nc = await nats.connect(platform.nats_url)
        try:
            js = nc.jetstream()
            subject = jobs.job_subject(names, "artifact", str(uuid.uuid4()), str(uuid.uuid4()))
            await js.publish(subject, b'{"job_id": "waiting"}')
            await _poll_metric(plain, urls["pipeline"], "forge_jobs_pending", {"job_type": "artifact"}, 1)
            await js.purge_stream(names.stream(jobs.JOBS_STREAM), subject=subject)
            await _poll_metric(plain, urls["pipeline"], "forge_jobs_pending", {"job_type": "artifact"}, 0)
        finally:
            await nc.close()

        # A step that runs until the test lets it go holds one of the worker's slots.
        marker = observed.gates / f"go-{uuid.uuid4().hex[:8]}"
        repository = f"obs{uuid.uuid4().hex[:8]}/gauges"
        sha = observed.push(repository, BLOCKING_PROJECT.format(marker=marker))
        run_id = await observed.start_run(gateway, repository, sha)
        await _poll_metric(plain, urls["worker"], "forge_worker_slots", {"state": "busy"}, 1)
        marker.write_text("go\n")
        run = await observed.wait_run(gateway, run_id, expect="failed")
        await _poll_metric(plain, urls["worker"], "forge_worker_slots", {"state": "busy"}, 0)
        after = await scrape(plain, observed)

    assert run["failed_phase"] == "test"

    def delta(process: str, name: str, **labels: str) -> float:
        return value(after[process], name, **labels) - value(before[process], name, **labels)

    assert delta("pipeline", "forge_pipeline_runs_total", status="failed") == 1
    assert delta("pipeline", "forge_pipeline_run_duration_seconds_count", status="failed") == 1
    assert delta("pipeline", "forge_pipeline_phase_duration_seconds_count", phase="test", status="failed") == 1
    # The build phase never ran: it has no duration.
    assert delta("pipeline", "forge_pipeline_phase_duration_seconds_count", phase="build") == 0
    assert delta("worker", "forge_worker_jobs_total", job_type="ci", status="failed") == 1
