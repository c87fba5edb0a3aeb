"""What the gateway serves for the console, as a browser meets it (no browser needed)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from forge_dev.testing import Platform


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=10.0) as c:
        yield c


def _asset_urls(shell: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/ui/[^"]+)"', shell)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/runs",
        f"/runs/{uuid.uuid4()}",
        "/releases",
        "/environments",
        "/approvals",
        "/webhooks",
        f"/webhooks/{uuid.uuid4()}",
        "/login",
    ],
)
async def test_every_page_loads_the_shell_with_a_strict_policy(client: httpx.AsyncClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.headers["cache-control"] == "no-cache"
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    urls = _asset_urls(resp.text)
    assert any(u.endswith("/js/app.js") for u in urls)
    assert any(u.endswith("/style.css") for u in urls)
    assert 'rel="modulepreload"' in resp.text


async def test_assets_are_versioned_immutable_and_typed(client: httpx.AsyncClient) -> None:
    shell = (await client.get("/runs")).text
    types = {}
    for url in _asset_urls(shell):
        resp = await client.get(url)
        assert resp.status_code == 200, url
        assert resp.headers["cache-control"] == "public, max-age=31536000, immutable"
        types[url.rsplit(".", 1)[1]] = resp.headers["content-type"]
        again = await client.get(url, headers={"If-None-Match": resp.headers["etag"]})
        assert again.status_code == 304
    assert types == {"svg": "image/svg+xml", "css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}
    prefix = _asset_urls(shell)[0].rsplit("/", 1)[0]
    module = await client.get(f"{prefix}/js/views/run.js")
    assert module.status_code == 200
    assert "import" in module.text
    # a page loaded before an upgrade still gets the files, but not cached for a year
    old = await client.get("/ui/000000000000/js/app.js")
    assert old.status_code == 200
    assert old.headers["cache-control"] == "no-cache"


async def test_unknown_assets_and_pages_are_404_envelopes(client: httpx.AsyncClient) -> None:
    for path in ("/ui/x/js/missing.js", "/ui/x/../../settings.py", "/ui/x/index.html", "/nowhere"):
        resp = await client.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["error"]["code"] == "resource_not_found"


async def test_config_names_the_issuer_and_public_client(client: httpx.AsyncClient, platform: Platform) -> None:
    resp = await client.get("/ui/config.json")
    assert resp.status_code == 200
    body = resp.json()
    assert body["oidc"] == {
        "issuer": platform.issuer_url,
        "client_id": "forge-cli",
        "scope": "openid profile email",
    }
    assert body["environments"] == ["dev", "staging", "production"]
    # the page may fetch from the issuer (the code exchange) and the log store (logs_url), no more
    csp = (await client.get("/runs")).headers["content-security-policy"]
    connect = next(d for d in csp.split("; ") if d.startswith("connect-src ")).split()[1:]
    issuer = platform.issuer_url.split("/realms/")[0]
    s3 = "/".join(platform.s3_url.split("/")[:3])
    assert connect == ["'self'", issuer, s3]


async def test_a_browser_following_a_commit_status_link_lands_on_the_run_page(
    client: httpx.AsyncClient, platform: Platform
) -> None:
    run_id = str(uuid.uuid4())
    browser = await client.get(f"/v1/runs/{run_id}", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 303
    assert browser.headers["location"] == f"/runs/{run_id}"
    # API clients are untouched: no token is still a 401, a token reaches the pipeline service
    assert (await client.get(f"/v1/runs/{run_id}")).status_code == 401
    with_token = await client.get(
        f"/v1/runs/{run_id}", headers={"Accept": "text/html", **platform.headers("v@acme.io", "viewer")}
    )
    assert with_token.status_code == 404
    assert with_token.json()["error"]["code"] == "resource_not_found"
