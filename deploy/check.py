"""Offline checks of everything under deploy/ and of docker-compose.yml (`make lint` runs them).

    python deploy/check.py                  # every check; exit 1 on any problem
    python deploy/check.py --write-schemas  # regenerate every chart's values.schema.json

No cluster, no helm binary, no network: Helm's own engine as a library (helm-python-sdk) lints
and renders each chart with its defaults and with every switch on; every rendered object is
validated against the Kubernetes 1.30 schemas (kubernetes-validate) or, for the KEDA and
Prometheus Operator kinds, against deploy/schemas/*.json (see deploy/schemas/generate.py); values.schema.json must match what
this file generates and accept the defaults; the alert rules go through `promtool check rules`
when promtool is installed; dashboards and alerts may only use the metrics docs/operations.md
lists as the contract; docker-compose.yml must satisfy the compose specification's schema and
publish the ports `make run` uses; the Dockerfile must pin its base by digest, build every
process and end as a non-root user with OCI labels.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as helm

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
HELM = DEPLOY / "helm"
ALERTS = DEPLOY / "prometheus" / "forge-alerts.yaml"
DASHBOARDS = DEPLOY / "grafana"
OPERATIONS = ROOT / "docs" / "operations.md"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_NATS = DEPLOY / "compose" / "nats.conf"
HELM_NATS = HELM / "forge" / "files" / "nats-authorization.conf"
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES_VERSION = "1.30.0"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container must listen on
SERVICES = ("gateway", "pipeline", "release", "deployment", "approval", "worker")
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring-servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring-prometheusrule-v1.json",
}
# Never reachable through the Ingress.
INTERNAL_PATHS = ("/metrics", "/healthz", "/readyz")
PUBLIC_PATHS = ("/", "/v1", "/docs", "/schema")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def all_on(chart: str) -> dict[str, Any]:
    """Values that switch every optional feature of ``chart`` on."""
    service: dict[str, Any] = {
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "autoscaling": {"enabled": True},
        "existingSecret": "forge-extra-settings",
    }
    if chart == "forge-gateway":
        service["ingress"] = {"enabled": True, "className": "nginx", "tlsSecretName": "forge-tls"}
        service["fileVolumes"] = [
            {
                "name": "trusted-issuers",
                "mountPath": "/etc/forge/trusted-issuers",
                "configMap": "forge-trusted-issuers",
            },
            {"name": "workload-key", "mountPath": "/etc/forge/workload-key", "secret": "forge-workload-key"},
        ]
    if chart == "forge-worker":
        service["keda"] = {"enabled": True}
    if chart == "forge-pipeline":
        service["executor"] = "argo"
    if chart != "forge":
        return service
    values: dict[str, Any] = {
        "global": {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboards": {"enabled": True},
    }
    for name in SERVICES:
        sub = all_on(f"forge-{name}")
        sub.pop("serviceMonitor")
        sub.pop("networkPolicy")
        values[f"forge-{name}"] = sub
    return values


def render(path: Path, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(path))
    out = chart.render(values, name="forge", namespace="forge", is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- Kubernetes and CRD schemas -------------------------------------------------------------


def validate_object(doc: dict[str, Any]) -> list[str]:
    where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    crd = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is not None:
        schema = json.loads((DEPLOY / "schemas" / crd).read_text())
        return [f"{where}: {e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(str(p) for p in exc.path)}: {exc.message}"]
    except kubernetes_validate.InvalidSchemaError as exc:
        return [f"{where}: no Kubernetes {KUBERNETES_VERSION} schema: {exc}"]
    return []


# --- What the manifests promise -------------------------------------------------------------


def check_workload(name: str, docs: list[dict[str, Any]], values: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return [f"{name}: {len(deployments)} Deployments"]
    pod = deployments[0]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    configmap = next(
        c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == deployments[0]["metadata"]["name"]
    )
    config = configmap.get("data", {})
    if {"configMapRef": {"name": configmap["metadata"]["name"]}} not in container["envFrom"]:
        problems.append(f"{name}: container does not load its ConfigMap")
    if values["service"]["enabled"]:
        if "Service" not in by_kind:
            problems.append(f"{name}: no Service")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            if container.get(probe, {}).get("httpGet", {}).get("path") != path:
                problems.append(f"{name}: {probe} is not GET {path}")
        notes = pod["metadata"].get("annotations", {})
        if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/path") != "/metrics":
            problems.append(f"{name}: no Prometheus scrape annotations")
        if config.get("FORGE_HOST") != ALL_INTERFACES or config.get("FORGE_PORT") != str(values["service"]["port"]):
            problems.append(f"{name}: FORGE_HOST/FORGE_PORT not set for the container")
    problems.extend(
        f"{name}: ConfigMap key {key} is not a FORGE_* setting" for key in config if not key.startswith("FORGE_")
    )
    env_names = [e["name"] for e in container.get("env", [])]
    if len(env_names) != len(set(env_names)) or set(env_names) & set(config):
        problems.append(f"{name}: a setting is defined twice (ConfigMap and Secret)")
    if not pod["spec"].get("topologySpreadConstraints"):
        problems.append(f"{name}: no topology spread")
    problems.extend(check_migration(name, by_kind.get("Job", []), config, values))
    return problems


def check_migration(name: str, jobs: list[dict[str, Any]], config: dict[str, str], values: dict[str, Any]) -> list[str]:
    if not values.get("migration", {}).get("enabled"):
        if jobs:
            return [f"{name}: a Job without migration.enabled"]
        return []
    problems: list[str] = []
    if config.get("FORGE_MIGRATE_ON_START") != "false":
        problems.append(f"{name}: pods still migrate at start (FORGE_MIGRATE_ON_START)")
    if len(jobs) != 1:
        return [*problems, f"{name}: {len(jobs)} migration Jobs"]
    job = jobs[0]
    hooks = set(job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))
    if hooks != {"pre-install", "pre-upgrade"}:
        problems.append(f"{name}: migration Job is not a pre-install/pre-upgrade hook")
    container = job["spec"]["template"]["spec"]["containers"][0]
    if container.get("args") != ["migrate"]:
        problems.append(f"{name}: migration Job does not run `migrate`")
    if "FORGE_DATABASE_URL" not in {e["name"] for e in container.get("env", [])}:
        problems.append(f"{name}: migration Job has no FORGE_DATABASE_URL")
    return problems


def path_reaches(rule: dict[str, Any], target: str) -> bool:
    path = rule["path"]
    if rule["pathType"] == "Exact":
        return bool(path == target)
    prefix = path.rstrip("/")
    return target == prefix or target.startswith(prefix + "/")


def check_ingress(name: str, docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        rules = [p for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
        for target in INTERNAL_PATHS:
            if any(path_reaches(rule, target) for rule in rules):
                problems.append(f"{name}: the Ingress publishes {target}")
        for target in PUBLIC_PATHS:
            if not any(path_reaches(rule, target) for rule in rules):
                problems.append(f"{name}: the Ingress does not route {target}")
    return problems


def check_switches(name: str, docs: list[dict[str, Any]], label: str) -> list[str]:
    if label != "every switch on":
        return []
    kinds = [d["kind"] for d in docs]
    deployments = kinds.count("Deployment")
    problems = [
        f"{name}: {kinds.count(kind)} {kind} for {deployments} Deployments"
        for kind in ("ServiceMonitor", "NetworkPolicy")
        if kinds.count(kind) != deployments
    ]
    if name.startswith(("forge ", "forge-worker")) and "ScaledObject" not in kinds:
        problems.append(f"{name}: no KEDA ScaledObject for the worker")
    if name.startswith("forge "):
        rule = next((d for d in docs if d["kind"] == "PrometheusRule"), None)
        if rule is None or rule["spec"] != yaml.safe_load(ALERTS.read_text()):
            problems.append(f"{name}: the PrometheusRule is not deploy/prometheus/forge-alerts.yaml")
        shipped = {key for d in docs if d["kind"] == "ConfigMap" for key in d.get("data", {}) if key.endswith(".json")}
        if shipped != {p.name for p in DASHBOARDS.glob("*.json")}:
            problems.append(f"{name}: dashboards shipped {sorted(shipped)}")
    return problems


# --- values.schema.json ---------------------------------------------------------------------


def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = list(required)
    return out


STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
INT: dict[str, Any] = {"type": "integer", "minimum": 0}
FREE: dict[str, Any] = {"type": "object"}
LIST: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
STRMAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
COMPONENT: dict[str, Any] = {"enum": list(SERVICES)}
SETTINGS: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": "^FORGE_[A-Z0-9_]+$"},
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}
PROBE = obj({"path": STR, "periodSeconds": INT, "timeoutSeconds": INT, "failureThreshold": INT}, ("path",))


# Every key a service chart's values may have; a chart gets the ones its values.yaml uses.
SERVICE_VALUES: dict[str, Any] = {
    "global": FREE,
    "enabled": BOOL,
    "forge-lib": FREE,  # Helm's (empty) values of the library dependency
    "replicaCount": INT,
    "image": obj(
        {
            "registry": STR,
            "name": STR,
            "tag": STR,
            "digest": {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"},
            "pullPolicy": {"enum": ["", "Always", "IfNotPresent", "Never"]},
        },
        ("registry", "name"),
    ),
    "imagePullSecrets": {"type": "array", "items": obj({"name": STR}, ("name",))},
    "fullnameOverride": STR,
    "serviceAccountName": STR,
    "service": obj(
        {
            "enabled": BOOL,
            "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        },
        ("enabled", "port"),
    ),
    "config": SETTINGS,
    "secretEnv": {
        "type": "array",
        "items": obj(
            {
                "name": {"type": "string", "pattern": "^FORGE_[A-Z0-9_]+$"},
                "secretName": {"type": "string", "minLength": 1},
                "key": {"type": "string", "minLength": 1},
                "optional": BOOL,
            },
            ("name", "secretName", "key"),
        ),
    },
    "existingSecret": STR,
    # forge-pipeline: how jobs run (docs/argo.md)
    "executor": {"enum": ["nats", "argo"]},
    "argo": obj(
        {
            "serverUrl": {"type": "string", "pattern": "^https?://"},
            "namespace": STR,
            "verifyTls": BOOL,
            "image": STR,
            "command": {"type": "string", "minLength": 1},
            "envSecret": STR,
            "pollInterval": STR,
            "deadlineGrace": STR,
            "rbac": obj({"create": BOOL}, ("create",)),
        },
        ("serverUrl", "command", "rbac"),
    ),
    "extraEnv": LIST,
    "probes": obj({"enabled": BOOL, "startup": PROBE, "liveness": PROBE, "readiness": PROBE}),
    "metrics": obj({"enabled": BOOL, "path": STR}),
    "resources": FREE,
    "autoscaling": obj(
        {"enabled": BOOL, "minReplicas": INT, "maxReplicas": INT, "targetCPUUtilizationPercentage": INT}
    ),
    "migration": obj({"enabled": BOOL, "backoffLimit": INT, "activeDeadlineSeconds": INT, "resources": FREE}),
    "serviceMonitor": obj({"enabled": BOOL, "interval": STR, "scrapeTimeout": STR, "labels": STRMAP}),
    "networkPolicy": obj(
        {
            "enabled": BOOL,
            "allowFrom": {"type": "array", "items": COMPONENT},
            "extraIngressFrom": LIST,
            "metricsFrom": LIST,
            "callsTo": {"type": "array", "items": COMPONENT},
            "allowAllEgress": BOOL,
            "egress": LIST,
        }
    ),
    "topologySpread": obj(
        {
            "enabled": BOOL,
            "maxSkew": {"type": "integer", "minimum": 1},
            "whenUnsatisfiable": {"enum": ["ScheduleAnyway", "DoNotSchedule"]},
            "topologyKeys": {"type": "array", "items": STR},
        }
    ),
    "podDisruptionBudget": obj({"enabled": BOOL, "maxUnavailable": {"type": ["integer", "string"]}}),
    "terminationGracePeriodSeconds": INT,
    "podSecurityContext": FREE,
    "securityContext": FREE,
    "dataVolumes": {
        "type": "array",
        "items": obj(
            {"name": STR, "mountPath": STR, "sizeLimit": STR, "persistentVolumeClaim": STR}, ("name", "mountPath")
        ),
    },
    # Read-only files from an existing ConfigMap or Secret (the gateway's trusted issuers, its
    # workload signing key): exactly one of configMap / secret.
    "fileVolumes": {
        "type": "array",
        "items": {
            **obj({"name": STR, "mountPath": STR, "configMap": STR, "secret": STR}, ("name", "mountPath")),
            "oneOf": [{"required": ["configMap"]}, {"required": ["secret"]}],
        },
    },
    "args": {"type": "array", "items": STR},
    "podAnnotations": STRMAP,
    "nodeSelector": STRMAP,
    "tolerations": LIST,
    "affinity": FREE,
    "ingress": obj(
        {
            "enabled": BOOL,
            "className": STR,
            "host": STR,
            "tlsSecretName": STR,
            "annotations": STRMAP,
            # "/" as a prefix would publish /metrics, /healthz and /readyz.
            "consolePaths": {"type": "array", "items": {"type": "string", "pattern": "^/[^/]+"}},
        }
    ),
    "keda": obj(
        {
            "enabled": BOOL,
            "minReplicas": INT,
            "maxReplicas": INT,
            "natsMonitoringEndpoint": STR,
            "account": STR,
            "stream": STR,
            "consumers": {"type": "array", "items": STR, "minItems": 1},
            "lagThreshold": STR,
            "cooldownPeriod": INT,
        }
    ),
}


def service_schema(name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    optional = {"global", "enabled", "forge-lib", "migration", "ingress", "keda"}
    props = {k: v for k, v in SERVICE_VALUES.items() if k in defaults or k in {"global", "enabled", "forge-lib"}}
    props["component"] = {"const": name.removeprefix("forge-")}
    schema = obj(props, tuple(k for k in props if k not in optional))
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": f"{name} values", **schema}


def umbrella_schema() -> dict[str, Any]:
    subcharts = {f"forge-{s}": {"type": "object", "properties": {"enabled": BOOL}} for s in SERVICES}
    schema = obj(
        {
            "component": STR,
            "fullnameOverride": STR,
            "forge-lib": FREE,
            "global": obj(
                {
                    "image": obj(
                        {"registry": STR, "tag": STR, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}
                    ),
                    "config": SETTINGS,
                    "serviceMonitor": obj({"enabled": BOOL}),
                    "networkPolicy": obj({"enabled": BOOL}),
                }
            ),
            "natsAuthorization": obj({"enabled": BOOL}),
            "prometheusRule": obj({"enabled": BOOL, "labels": STRMAP}),
            "dashboards": obj(
                {"enabled": BOOL, "label": STR, "labelValue": STR, "folderAnnotation": STR, "folder": STR}
            ),
            **subcharts,
        },
        ("global", "prometheusRule", "dashboards"),
    )
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": "forge (umbrella) values", **schema}


def expected_schema(path: Path) -> dict[str, Any]:
    if path.name == "forge":
        return umbrella_schema()
    return service_schema(path.name, yaml.safe_load((path / "values.yaml").read_text()))


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def check_values_schema(path: Path) -> list[str]:
    target = path / "values.schema.json"
    if not target.exists() or target.read_text() != schema_text(expected_schema(path)):
        return [f"{path.name}: values.schema.json is stale: python deploy/check.py --write-schemas"]
    schema = json.loads(target.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((path / "values.yaml").read_text())
    return [
        f"{path.name}: defaults: {e.json_path}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(defaults)
    ]


# --- Charts ----------------------------------------------------------------------------------


def chart_dirs() -> list[Path]:
    return sorted(p for p in HELM.iterdir() if (p / "Chart.yaml").exists())


def check_chart(path: Path) -> list[str]:
    problems: list[str] = []
    report = helm.lint(str(path), strict=True)
    problems.extend(
        f"{path.name}: lint: {m['path']}: {m['error']}" for m in report.get("messages", []) if m["severity"] >= 2
    )
    problems.extend(f"{path.name}: lint: {e}" for e in report.get("errors", []))
    if yaml.safe_load((path / "Chart.yaml").read_text()).get("type") == "library":
        return problems
    problems.extend(check_values_schema(path))
    defaults = yaml.safe_load((path / "values.yaml").read_text())
    for label, overrides in (("defaults", None), ("every switch on", all_on(path.name))):
        name = f"{path.name} ({label})"
        try:
            docs = render(path, overrides)
        except Exception as exc:  # noqa: BLE001 - report every chart, not the first failure
            problems.append(f"{name}: render failed: {exc}")
            continue
        for doc in docs:
            problems.extend(f"{name}: {p}" for p in validate_object(doc))
        problems.extend(check_ingress(name, docs))
        problems.extend(check_switches(name, docs, label))
        for service, values, workload in workloads(path, defaults, overrides or {}, docs):
            problems.extend(check_workload(f"{name} {service}", workload, values))
        say(f"{name}: {len(docs)} objects: {', '.join(sorted({d['kind'] for d in docs}))}")
    return problems


def workloads(
    path: Path, defaults: dict[str, Any], overrides: dict[str, Any], docs: list[dict[str, Any]]
) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Each service's objects with its effective values (the umbrella holds six)."""
    if path.name != "forge":
        yield path.name, merged(defaults, overrides), docs
        return
    for service in SERVICES:
        chart = f"forge-{service}"
        values = merged(yaml.safe_load((HELM / chart / "values.yaml").read_text()), overrides.get(chart, {}))
        own = [d for d in docs if d["metadata"].get("labels", {}).get("helm.sh/chart", "").startswith(chart + "-")]
        yield chart, values, own


# --- Alerts, dashboards and the metric contract ----------------------------------------------

METRIC = re.compile(r"\b((?:forge|process)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def contract_metrics() -> set[str]:
    """The metric names docs/operations.md lists in its contract table (first column)."""
    text = OPERATIONS.read_text()
    return set(re.findall(r"^\| `((?:forge|process)_[a-z0-9_]+)`", text, re.MULTILINE))


def metric_names(expr: str) -> set[str]:
    names = set()
    for name in METRIC.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        out[path.name] = [t["expr"] for p in board.get("panels", []) for t in p.get("targets", []) if "expr" in t]
    return out


def check_observability() -> list[str]:
    problems: list[str] = []
    contract = contract_metrics()
    if not contract:
        problems.append("docs/operations.md lists no metric contract")
    runbooks = OPERATIONS.read_text().lower()
    for rule in alert_rules():
        alert = rule["alert"]
        if f"### {alert.lower()}" not in runbooks:
            problems.append(f"alert {alert}: no runbook section '### {alert}' in docs/operations.md")
        problems.extend(
            f"alert {alert}: {m} is not in the metric contract" for m in sorted(metric_names(rule["expr"]) - contract)
        )
    boards = dashboard_queries()
    if len(boards) < 4:
        problems.append(f"{len(boards)} dashboards under deploy/grafana (the spec names four)")
    for name, queries in boards.items():
        board = json.loads((DASHBOARDS / name).read_text())
        if not board.get("uid") or not board.get("title") or not queries:
            problems.append(f"{name}: a dashboard needs a uid, a title and queries")
        for query in queries:
            problems.extend(
                f"{name}: {m} is not in the metric contract" for m in sorted(metric_names(query) - contract)
            )
    promtool = shutil.which("promtool")
    if promtool is None:
        say("promtool not installed (Debian package prometheus): alert rules not checked with promtool")
    else:
        run = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            problems.append(f"promtool check rules: {run.stdout}{run.stderr}")
        else:
            say(f"promtool check rules: {len(alert_rules())} rules ok")
    return problems


# --- docker-compose.yml -----------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def check_compose() -> list[str]:
    from forge_dev.stack import StackConfig  # the ports `make run` publishes

    document = yaml.safe_load(COMPOSE.read_text())
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"docker-compose.yml: {e.json_path}: {e.message}" for e in validator.iter_errors(document)]
    stack = StackConfig(data_dir=Path())
    published = {
        str(port).rsplit(":", 1)[0].rsplit(":", 1)[-1]
        for service in document.get("services", {}).values()
        for port in service.get("ports", [])
    }
    wanted = {
        "NATS": stack.nats_port,
        "S3": stack.s3_port,
        "issuer/Keycloak": stack.issuer_port,
        "gateway": stack.gateway_port,
    }
    problems.extend(
        f"docker-compose.yml: {what} is not published on host port {port} as in `make run`"
        for what, port in wanted.items()
        if str(port) not in published
    )
    say(f"docker-compose.yml: {len(document.get('services', {}))} services, compose specification schema checked")
    return problems


def check_compose_nats() -> list[str]:
    """deploy/compose/nats.conf holds exactly the permission model's authorization block (with
    its development passwords), and every Forge container connects as its own identity."""
    from urllib.parse import urlsplit

    from forge_common.nats_auth import IDENTITIES, authorization_block

    conf = COMPOSE_NATS.read_text()
    passwords = dict(re.findall(r'\{"user": "([a-z]+)", "password": "([^"]*)"', conf))
    problems: list[str] = []
    if set(passwords) != set(IDENTITIES):
        problems.append(f"{COMPOSE_NATS.name}: users {sorted(passwords)}, expected {sorted(IDENTITIES)}")
    elif authorization_block({i: passwords[i] for i in IDENTITIES}) not in conf:
        problems.append(
            f"{COMPOSE_NATS.name}: the authorization block differs from forge_common.nats_auth "
            "(regenerate it: python -m forge_common.nats_auth --password-suffix=-dev)"
        )
    if re.search(r"^\s*(no_auth_user|accounts)\b", conf, re.MULTILINE):
        problems.append(f"{COMPOSE_NATS.name}: anonymous or extra accounts configured")
    document = yaml.safe_load(COMPOSE.read_text())
    for name, service in document.get("services", {}).items():
        url = (service.get("environment") or {}).get("FORGE_NATS_URL")
        if name not in IDENTITIES or name in ("events", "admin"):
            if url is not None and name not in IDENTITIES:
                problems.append(f"docker-compose.yml: {name} sets FORGE_NATS_URL but has no NATS identity")
            continue
        parts = urlsplit(url or "")
        if parts.username != name or parts.password != passwords.get(name):
            problems.append(f"docker-compose.yml: {name} does not connect to NATS as its identity {name!r}")
    if HELM_NATS.read_text() != authorization_block(None):
        problems.append(
            f"{HELM_NATS.relative_to(ROOT)} differs from forge_common.nats_auth "
            f"(regenerate it: python -m forge_common.nats_auth > {HELM_NATS.relative_to(ROOT)})"
        )
    say(f"{COMPOSE_NATS.name}, {HELM_NATS.name}: NATS identities checked against forge_common.nats_auth")
    return problems


# --- Dockerfile -------------------------------------------------------------------------------


def check_dockerfile() -> list[str]:
    """What the one image recipe promises, read from its instructions (no image can be built here)."""
    text = DOCKERFILE.read_text()
    problems: list[str] = []
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    if base is None or not re.search(r"@sha256:[0-9a-f]{64}$", base.group(1)):
        problems.append("Dockerfile: the base image (ARG PYTHON_IMAGE) is not pinned by digest")
    stages = {m.group(1) for m in re.finditer(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE)}
    problems.extend(f"Dockerfile: no stage service-{s}" for s in SERVICES if f"service-{s}" not in stages)
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)$", final, re.MULTILINE)
    if not users or users[-1].split(":")[0] in {"0", "root"}:
        problems.append("Dockerfile: the final stage does not end as a non-root user")
    problems.extend(
        f"Dockerfile: no OCI label org.opencontainers.image.{label}"
        for label in ("title", "description", "version", "revision")
        if f"org.opencontainers.image.{label}=" not in final
    )
    if re.search(r"^RUN .*\bpip\b", final, re.MULTILINE):
        problems.append("Dockerfile: the final stage runs pip")
    if not re.search(r"^ENTRYPOINT ", final, re.MULTILINE):
        problems.append("Dockerfile: the final stage has no ENTRYPOINT")
    return problems


def main(argv: list[str]) -> int:
    if argv[1:] == ["--write-schemas"]:
        for path in chart_dirs():
            if yaml.safe_load((path / "Chart.yaml").read_text()).get("type") != "library":
                (path / "values.schema.json").write_text(schema_text(expected_schema(path)))
        return 0
    problems: list[str] = []
    charts = chart_dirs()
    for path in charts:
        problems.extend(check_chart(path))
    problems.extend(check_observability())
    problems.extend(check_compose())
    problems.extend(check_compose_nats())
    problems.extend(check_dockerfile())
    for problem in problems:
        say(f"PROBLEM {problem}")
    say(f"{len(charts)} charts, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
