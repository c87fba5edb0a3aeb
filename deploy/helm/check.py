"""Lint and render every Forge chart offline, then check what the manifests promise.

    python deploy/helm/check.py

Needs `helm-python-sdk` (Helm's engine as a library; no helm binary, no cluster) and PyYAML:
`pip install helm-python-sdk pyyaml`. Each chart is linted strictly and rendered twice: with its
defaults and with every optional feature switched on (HPA/KEDA, ingress).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from helm_python import chart as helm

HERE = Path(__file__).resolve().parent
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a container must listen on
OPTIONAL_ON: dict[str, dict[str, Any]] = {
    "forge-gateway": {"ingress": {"enabled": True, "tlsSecretName": "forge-tls"}, "autoscaling": {"enabled": True}},
    "forge-worker": {"keda": {"enabled": True}},
}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def render(path: Path, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(path))
    out = chart.render(values, name=chart.name, namespace="forge")
    docs: list[dict[str, Any]] = []
    for text in out.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def check(name: str, docs: list[dict[str, Any]], values: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    kinds = {d["kind"]: d for d in docs}
    dep = kinds.get("Deployment")
    if dep is None:
        return [f"{name}: no Deployment"]
    pod = dep["spec"]["template"]
    container = pod["spec"]["containers"][0]
    config = kinds.get("ConfigMap", {}).get("data", {})
    if not any(
        ref.get("configMapRef", {}).get("name") == kinds["ConfigMap"]["metadata"]["name"]
        for ref in container["envFrom"]
    ):
        problems.append(f"{name}: container does not load its ConfigMap")
    if values["service"]["enabled"]:
        if "Service" not in kinds:
            problems.append(f"{name}: no Service")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            if container.get(probe, {}).get("httpGet", {}).get("path") != path:
                problems.append(f"{name}: {probe} is not GET {path}")
        notes = pod["metadata"].get("annotations", {})
        if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/path") != "/metrics":
            problems.append(f"{name}: no Prometheus scrape annotations")
        if config.get("FORGE_HOST") != ALL_INTERFACES or config.get("FORGE_PORT") != str(values["service"]["port"]):
            problems.append(f"{name}: FORGE_HOST/FORGE_PORT not set for the container")
    for key in config:
        if not key.startswith("FORGE_"):
            problems.append(f"{name}: ConfigMap key {key} is not a FORGE_* setting")
    env_names = [e["name"] for e in container.get("env", [])]
    if len(env_names) != len(set(env_names)) or set(env_names) & set(config):
        problems.append(f"{name}: a setting is defined twice (ConfigMap and Secret)")
    return problems


def main() -> int:
    problems: list[str] = []
    charts = sorted(p for p in HERE.iterdir() if (p / "Chart.yaml").exists())
    for path in charts:
        report = helm.lint(str(path), strict=True)
        for message in report.get("messages", []):
            if message["severity"] >= 2:
                problems.append(f"{path.name}: lint: {message['path']}: {message['error']}")
        problems.extend(f"{path.name}: lint: {e}" for e in report.get("errors", []))
        values = yaml.safe_load((path / "values.yaml").read_text())
        for label, overrides in (("defaults", None), ("optional features on", OPTIONAL_ON.get(path.name))):
            try:
                docs = render(path, overrides)
            except Exception as exc:  # noqa: BLE001 - report every chart, not the first failure
                problems.append(f"{path.name} ({label}): render failed: {exc}")
                continue
            problems.extend(check(f"{path.name} ({label})", docs, values))
            say(f"{path.name} ({label}): {', '.join(sorted(d['kind'] for d in docs))}")
    for problem in problems:
        say(f"PROBLEM {problem}")
    say(f"{len(charts)} charts, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
