"""The worker's optional health and metrics listener."""

from __future__ import annotations

import httpx

from .conftest import Cell


async def test_health_and_metrics(cell: Cell, client: httpx.AsyncClient) -> None:
    base = f"http://127.0.0.1:{cell.metrics_port}"
    assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}
    ready = await client.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": "ok"}
    text = (await client.get(f"{base}/metrics")).text
    assert "forge_worker_jobs_total" in text
    assert "forge_worker_steps_running" in text
