"""The Argo executor's cell: a pipeline instance with ``FORGE_EXECUTOR=argo`` submitting to
:class:`FakeArgo` (a real HTTP server running each workflow's pod command in a subprocess), a
NATS worker for discovery only (discovery stays on the workers, docs/argo.md), a release
service, and a gateway of their own in front: the tests talk to the gateway only.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform
from tests.execution.conftest import Cell

from .fake_argo import FakeArgo

ARGO_TOKEN = "argo-test-token"


@dataclass
class ArgoCell:
    cell: Cell
    argo: FakeArgo
    gateway: Process

    @property
    def url(self) -> str:
        assert self.gateway.url
        return self.gateway.url


def executor_env(argo: FakeArgo) -> dict[str, str]:
    """A pipeline instance's settings for the fake Argo server."""
    return {
        "FORGE_EXECUTOR": "argo",
        "FORGE_ARGO_SERVER_URL": argo.url,
        "FORGE_ARGO_NAMESPACE": "forge-jobs",
        "FORGE_ARGO_TOKEN": ARGO_TOKEN,
        "FORGE_ARGO_IMAGE": "registry.example.com/forge/forge-worker:test",
        # The "image" is this repository's venv: the worker's single-job command.
        "FORGE_ARGO_COMMAND": f"{sys.executable} -m forge_worker run-job",
        "FORGE_ARGO_ENV_SECRET": "forge-worker",
        # Longer than any test waits: finished workflows are seen through the event stream
        # (the watch), not by polling.
        "FORGE_ARGO_POLL_INTERVAL": "5m",
        # Argo's activeDeadlineSeconds decides timeouts; the dispatcher's backstop is far.
        "FORGE_ARGO_DEADLINE_GRACE": "60s",
    }


def add_worker_secret(argo: FakeArgo, cell: Cell, pipeline_url: str, release_url: str) -> None:
    """What the Helm chart's job Secret holds: the worker's settings, for the job pods."""
    argo.add_secret(
        "forge-worker",
        {
            **cell.platform.env(),
            **cell.env,
            "FORGE_PIPELINE_URL": pipeline_url,
            "FORGE_RELEASE_URL": release_url,
            "FORGE_LOG_FORMAT": "json",
        },
    )


@pytest.fixture(scope="module")
async def argo_cell(platform: Platform) -> AsyncIterator[ArgoCell]:
    argo = await FakeArgo(token=ARGO_TOKEN).start()
    cell = Cell(platform, "argo")
    try:
        cell.start_pipeline(env=executor_env(argo))
        cell.start_worker(env={"FORGE_WORKER_TYPES": "discovery"})
        release = cell.start_release()
        pipeline_url = cell.pipelines[0].url or ""
        add_worker_secret(argo, cell, pipeline_url, release.url or "")
        gateway = cell.platform.start_process(
            "gateway", env={"FORGE_PIPELINE_URL": pipeline_url, "FORGE_RELEASE_URL": release.url or ""}
        )
        try:
            yield ArgoCell(cell, argo, gateway)
        finally:
            gateway.stop()
    finally:
        cell.close()
        await argo.stop()
