"""Deprecation headers on the operations FORGE_DEPRECATIONS lists, nothing on the others."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

from .conftest import start_gateway, upstream_env
from .upstreams import Server

NOTICE = "https://forge.example.com/docs/api#deprecated-run-logs"
TABLE = f"""
[[operations]]
method = "GET"
path = "/v1/runs/{{run_id}}/legacy-summary"
deprecated = 2026-01-15T00:00:00Z
sunset = 2026-09-01
link = "{NOTICE}"
"""


@pytest.fixture(scope="module")
async def deprecating_gateway(
    platform: Platform, echo_servers: dict[str, Server], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Process]:
    table = tmp_path_factory.mktemp("versioning") / "deprecations.toml"
    table.write_text(TABLE)
    proc = await start_gateway(platform, {**upstream_env(echo_servers), "FORGE_DEPRECATIONS": str(Path(table))})
    yield proc
    proc.stop()


async def test_deprecated_operation_carries_deprecation_sunset_and_link(
    platform: Platform, deprecating_gateway: Process
) -> None:
    headers = platform.headers(f"ver-{uuid.uuid4().hex[:8]}@example.com", "viewer")
    async with httpx.AsyncClient(base_url=deprecating_gateway.url, timeout=30) as client:
        resp = await client.get("/v1/runs/4b1f0c52-1111-4c3e-9a57-0d2f8e7a9b10/legacy-summary", headers=headers)
        assert resp.status_code == 200
        assert resp.json()["upstream"] == "pipeline"  # still served: deprecated, not gone
        assert resp.headers["deprecation"] == "@1768435200"  # RFC 9745: 2026-01-15T00:00:00Z
        sunset = parsedate_to_datetime(resp.headers["sunset"])  # RFC 8594: an HTTP-date
        assert sunset.isoformat() == "2026-09-01T00:00:00+00:00"
        assert resp.headers["sunset"] == "Tue, 01 Sep 2026 00:00:00 GMT"
        links = resp.headers.get_list("link")
        assert f'<{NOTICE}>; rel="deprecation"; type="text/html"' in links
        assert f'<{NOTICE}>; rel="sunset"; type="text/html"' in links

        # Another method on the same path, and the run itself, are not deprecated.
        for method, path in (
            ("POST", "/v1/runs/4b1f0c52-1111-4c3e-9a57-0d2f8e7a9b10/legacy-summary"),
            ("GET", "/v1/runs/4b1f0c52-1111-4c3e-9a57-0d2f8e7a9b10"),
        ):
            resp = await client.request(method, path, headers=headers)
            assert resp.status_code == 200
            assert "deprecation" not in resp.headers
            assert "sunset" not in resp.headers


async def test_unknown_api_version_is_404(platform: Platform, deprecating_gateway: Process) -> None:
    headers = platform.headers(f"ver-{uuid.uuid4().hex[:8]}@example.com", "viewer")
    async with httpx.AsyncClient(base_url=deprecating_gateway.url, timeout=30) as client:
        resp = await client.get("/v2/runs", headers=headers)
        assert resp.status_code == 404
        resp = await client.get("/v1/runs", headers=headers)
        assert resp.status_code == 200
