"""What `make lint` promises an operator about deploy/: every chart installs as rendered, every
object is valid for Kubernetes 1.30 and its CRDs, nothing internal is published, dashboards and
alerts use only the metric contract, docker-compose.yml is a valid compose file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("forge_deploy_check", ROOT / "deploy" / "check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = load_check()
CHARTS = [p.name for p in check.chart_dirs()]


def test_there_is_an_umbrella_a_library_and_a_chart_per_process() -> None:
    assert set(CHARTS) == {"forge", "forge-lib", *(f"forge-{s}" for s in check.SERVICES)}


@pytest.mark.parametrize("chart", CHARTS)
def test_chart_lints_renders_and_validates_with_defaults_and_every_switch_on(chart: str) -> None:
    assert check.check_chart(check.HELM / chart) == []


def test_alerts_and_dashboards_use_only_the_documented_metrics_and_have_runbooks() -> None:
    assert check.check_observability() == []


def test_compose_file_is_valid_and_publishes_make_runs_ports() -> None:
    assert check.check_compose() == []


def test_an_invalid_object_is_reported() -> None:
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {"spec": {"containers": []}}},
    }
    assert check.validate_object(deployment)
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "30s"}]},
    }
    assert check.validate_object(monitor)


def test_an_ingress_routing_prefix_slash_would_publish_metrics_and_is_reported() -> None:
    ingress = {
        "kind": "Ingress",
        "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]},
    }
    problems = check.check_ingress("gateway", [ingress])
    assert any("/metrics" in p for p in problems)


def test_the_gateway_ingress_routes_the_public_paths_only() -> None:
    docs = check.render(check.HELM / "forge-gateway", {"ingress": {"enabled": True}})
    [ingress] = [d for d in docs if d["kind"] == "Ingress"]
    paths = {(p["path"], p["pathType"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {
        ("/", "Exact"),
        ("/v1", "Prefix"),
        ("/docs", "Prefix"),
        ("/schema", "Prefix"),
        ("/console", "Prefix"),
    }


def test_values_schema_refuses_a_console_path_of_slash() -> None:
    with pytest.raises(Exception, match="consolePaths"):
        check.render(check.HELM / "forge-gateway", {"ingress": {"enabled": True, "consolePaths": ["/"]}})


def test_values_schema_refuses_a_misspelt_key() -> None:
    with pytest.raises(Exception, match="replicas"):
        check.render(check.HELM / "forge", {"forge-pipeline": {"replicas": 3}})


def test_umbrella_migrates_before_pods_and_pods_do_not_migrate_at_start() -> None:
    docs = check.render(check.HELM / "forge", None)
    jobs = {d["metadata"]["name"] for d in docs if d["kind"] == "Job"}
    assert jobs == {f"forge-{s}-migrate" for s in ("pipeline", "release", "deployment", "approval")}
    settings = {f"forge-{s}" for s in check.SERVICES}  # the services' settings, not other ConfigMaps
    for configmap in (d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in settings):
        name = configmap["metadata"]["name"]
        if name in {"forge-gateway", "forge-worker"}:
            assert "FORGE_MIGRATE_ON_START" not in configmap["data"]
        else:
            assert configmap["data"]["FORGE_MIGRATE_ON_START"] == "false", name


def test_dockerfile_pins_its_base_builds_every_process_and_runs_as_non_root() -> None:
    assert check.check_dockerfile() == []


def test_a_setting_moved_to_a_secret_leaves_the_configmap() -> None:
    secret = {"name": "FORGE_NATS_URL", "secretName": "forge-nats-pipeline", "key": "url"}
    docs = check.render(check.HELM / "forge-pipeline", {"secretEnv": [secret]})
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert "FORGE_NATS_URL" not in configmap["data"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "FORGE_NATS_URL",
        "valueFrom": {"secretKeyRef": {"name": "forge-nats-pipeline", "key": "url", "optional": False}},
    } in [{k: e[k] for k in ("name", "valueFrom")} for e in env]


def test_compose_and_helm_nats_authorization_follow_the_permission_model() -> None:
    assert check.check_compose_nats() == []
    docs = check.render(check.HELM / "forge", None)
    [authorization] = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-nats-authorization")
    ]
    text = authorization["data"]["authorization.conf"]
    for identity in ("pipeline", "release", "deployment", "approval", "worker", "events", "admin"):
        assert f'{{"user": "{identity}", "password": $NATS_PASSWORD_{identity.upper()}' in text


def test_every_nats_client_chart_connects_as_its_own_identity() -> None:
    for service in ("pipeline", "release", "deployment", "approval", "worker"):
        docs = check.render(check.HELM / f"forge-{service}", None)
        [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        assert configmap["data"]["FORGE_NATS_USER"] == service
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        password = next(e for e in env if e["name"] == "FORGE_NATS_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"]["name"] == "forge-nats"
        assert password["valueFrom"]["secretKeyRef"]["key"] == f"{service}-password"
