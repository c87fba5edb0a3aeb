"""Regenerate the CRD schemas deploy/check.py validates KEDA and Prometheus Operator objects with.

    pip install cloudcoil==0.6.0 cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0
    python deploy/schemas/generate.py

The cloudcoil model packages on PyPI are generated from the KEDA 2.16 and Prometheus Operator
0.80 CustomResourceDefinitions; their pydantic models give the JSON schemas. Unknown fields are
made errors here (``additionalProperties: false``), as the API server's structural schemas
prune them silently: a misspelt field in a chart must fail `make lint`, not vanish in the cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

HERE = Path(__file__).resolve().parent
MODELS: dict[str, tuple[Any, str, str]] = {
    "keda-scaledobject-v1alpha1.json": (ScaledObject, "keda.sh/v1alpha1", "cloudcoil-models-keda 2.16.1.0"),
    "monitoring-servicemonitor-v1.json": (
        ServiceMonitor,
        "monitoring.coreos.com/v1",
        "cloudcoil-models-prometheus-operator 0.80.1.0",
    ),
    "monitoring-prometheusrule-v1.json": (
        PrometheusRule,
        "monitoring.coreos.com/v1",
        "cloudcoil-models-prometheus-operator 0.80.1.0",
    ),
}


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {key: strict(value) for key, value in node.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(item) for item in node]
    return node


def main() -> None:
    for name, (model, api_version, source) in MODELS.items():
        schema = strict(model.model_json_schema(by_alias=True))
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["description"] = f"{model.__name__} ({api_version}) from {source} (PyPI), unknown fields refused."
        schema["properties"]["apiVersion"] = {"const": api_version}
        schema["properties"]["kind"] = {"const": model.__name__}
        (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
