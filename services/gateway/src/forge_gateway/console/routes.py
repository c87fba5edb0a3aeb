"""Routes of the web console: the page shell, its static assets and its public configuration.

Every asset is read from the package once at start-up and served from memory under
``/ui/<version>/``, where ``version`` is a hash of all of them: a deployment that changes a file
changes every asset URL, so assets can be cached for a year (``immutable``) while the shell, which
names the version, is revalidated on every load (``no-cache`` + ``ETag``). ES modules import each
other relatively, so they stay under the same versioned prefix without a build step.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from litestar import MediaType, Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler

from forge_gateway.settings import Settings

__all__ = ["browser_run_redirect", "console_handlers"]

_CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
}
# Client-side routes: each loads the shell, so deep links (the commit status's details link
# ``/runs/<id>``) open the right page.
_PAGES = (
    "/",
    "/runs",
    "/runs/{run_id:str}",
    "/releases",
    "/environments",
    "/approvals",
    "/webhooks",
    "/webhooks/{subscription_id:str}",
    "/login",
    "/console/callback",
)
_RUN_PATH = re.compile(r"^/v1/runs/([0-9a-fA-F-]{36})/?$")


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    """Every file under ``static/`` by its relative path ("js/app.js")."""
    root = resources.files(__package__).joinpath("static")
    assets: dict[str, _Asset] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                pending.append((entry, f"{name}/"))
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if suffix not in _CONTENT_TYPES:
                continue
            body = entry.read_bytes()
            assets[name] = _Asset(body, _CONTENT_TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    """Only the gateway's own files run; fetch() may reach the gateway, the issuer (token
    endpoint of the login flow) and the log store (``logs_url`` is a presigned S3 link)."""
    connect = ["'self'"]
    for url in (settings.console_oidc_issuer or settings.oidc_issuer, settings.s3_url, settings.s3_public_url):
        origin = _origin(url)
        if origin and origin not in connect:
            connect.append(origin)
    connect.extend(o for o in settings.console_connect_src.split() if o not in connect)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src {' '.join(connect)}",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _security_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        # The login callback URL carries the authorization code: never send it elsewhere.
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def _render_shell(assets: dict[str, _Asset], prefix: str, config: dict[str, Any]) -> bytes:
    """The page every console route answers: asset URLs versioned, the configuration inlined
    (one request less before the first API call; the CSP forbids inline scripts, so it is a
    meta tag's attribute) and every module preloaded, so the import graph loads in parallel
    instead of one level at a time."""
    preload = "\n".join(
        f'  <link rel="modulepreload" href="{prefix}/{name}">'
        for name in sorted(assets)
        if name.endswith(".js") and name != "js/app.js"
    )
    text = assets["index.html"].body.decode()
    text = text.replace("{{CONFIG}}", html.escape(json.dumps(config), quote=True)).replace("{{PRELOAD}}", preload)
    return text.replace("{{PREFIX}}", prefix).encode()


def console_handlers(settings: Settings) -> list[HTTPRouteHandler]:
    """The console's route handlers for the gateway's Litestar app (none when disabled)."""
    if not settings.console_enabled:
        return []
    assets = _load_assets()
    version = hashlib.sha256(b"".join(a.etag.encode() for _, a in sorted(assets.items()))).hexdigest()[:12]
    prefix = f"/ui/{version}"
    headers = _security_headers(content_security_policy(settings))
    config: dict[str, Any] = {
        "api": "/v1",
        "environments": ["dev", "staging", "production"],
        "oidc": {
            "issuer": settings.console_oidc_issuer or settings.oidc_issuer,
            "client_id": settings.console_oidc_client_id,
            "scope": "openid profile email",
        },
    }
    shell = _render_shell(assets, prefix, config)
    shell_etag = f'"{hashlib.sha256(shell).hexdigest()[:20]}"'

    @get(list(_PAGES), sync_to_thread=False, include_in_schema=False)
    def page(request: Request[Any, Any, Any]) -> Response[bytes]:
        if request.headers.get("if-none-match") == shell_etag:
            return Response(b"", status_code=304, headers={**headers, "ETag": shell_etag, "Cache-Control": "no-cache"})
        return Response(
            shell,
            media_type=MediaType.HTML,
            headers={**headers, "ETag": shell_etag, "Cache-Control": "no-cache"},
        )

    @get("/ui/config.json", sync_to_thread=False, include_in_schema=False)
    def console_config() -> Response[dict[str, Any]]:
        return Response(config, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @get("/ui/{asset_version:str}/{name:path}", sync_to_thread=False, include_in_schema=False)
    def asset(request: Request[Any, Any, Any], asset_version: str, name: str) -> Response[bytes]:
        found = assets.get(name.lstrip("/"))
        if found is None or name.endswith("index.html"):
            raise NotFoundException(f"no console asset {name.lstrip('/')!r}")
        # An old version's URL (a page loaded before an upgrade) gets today's file, uncached.
        cache = "public, max-age=31536000, immutable" if asset_version == version else "no-cache"
        common = {**headers, "ETag": found.etag, "Cache-Control": cache}
        if request.headers.get("if-none-match") == found.etag:
            return Response(b"", status_code=304, headers=common)
        return Response(found.body, media_type=found.content_type, headers=common)

    return [page, console_config, asset]


def browser_run_redirect(scope: dict[str, Any]) -> str | None:
    """``/runs/<id>`` when a browser navigates to the API URL of a run without a token.

    GitHub commit statuses made before the details link pointed at the console name
    ``/v1/runs/<id>``; a browser following one gets the run's page instead of a 401.
    """
    if scope.get("method") != "GET":
        return None
    match = _RUN_PATH.match(scope.get("path", ""))
    if match is None:
        return None
    accept = b""
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            return None
        if key == b"accept":
            accept = value
    if b"text/html" not in accept:
        return None
    return f"/runs/{match.group(1).lower()}"
