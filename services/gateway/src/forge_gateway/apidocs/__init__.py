"""The API's published contract: the OpenAPI and AsyncAPI documents and ``/docs`` to browse them.

``/schema/openapi.json`` (also ``/openapi.json``) is the committed, generated ``openapi.json``
(:mod:`forge_gateway.contract`); ``/schema/asyncapi.json`` is generated from
:mod:`forge_common.events` at start-up. ``/docs`` is Swagger UI from the ``swagger-ui-py``
package's files, served by the gateway itself (no CDN; works offline), under a
Content-Security-Policy that lets only those files run. None of these needs a token.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import msgspec
from litestar import MediaType, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler

from forge_common.asyncapi import asyncapi_document

__all__ = ["CONTENT_SECURITY_POLICY", "contract_handlers"]

# Swagger UI's scripts are the gateway's own files; React sets inline style attributes (hence
# 'unsafe-inline' for styles only) and its icons are data: URIs. Requests go to the gateway.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
# What the page loads from the swagger-ui-py package (its ``static/`` holds Swagger UI's dist).
_SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
_DOCUMENT_HEADERS = {"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"}


def _assets() -> dict[str, tuple[bytes, str]]:
    swagger = resources.files("swagger_ui").joinpath("static")
    own = resources.files(__package__).joinpath("static")
    files = {name: swagger.joinpath(name).read_bytes() for name in _SWAGGER_FILES}
    files["init.js"] = own.joinpath("init.js").read_bytes()
    return {name: (body, _TYPES["." + name.rsplit(".", 1)[1]]) for name, body in files.items()}


def contract_handlers() -> list[HTTPRouteHandler]:
    openapi = resources.files("forge_gateway").joinpath("openapi.json").read_bytes()
    asyncapi = msgspec.json.encode(asyncapi_document())
    assets = _assets()
    version = hashlib.sha256(b"".join(body for _, (body, _) in sorted(assets.items()))).hexdigest()[:12]
    prefix = f"/docs/{version}"
    page = resources.files(__package__).joinpath("static", "index.html").read_text().replace("{{ASSETS}}", prefix)
    page_headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }

    @get(["/schema/openapi.json", "/openapi.json"], sync_to_thread=False, include_in_schema=False)
    def openapi_document() -> Response[bytes]:
        return Response(openapi, media_type=MediaType.JSON, headers=_DOCUMENT_HEADERS)

    @get("/schema/asyncapi.json", sync_to_thread=False, include_in_schema=False)
    def asyncapi_endpoint() -> Response[bytes]:
        return Response(asyncapi, media_type=MediaType.JSON, headers=_DOCUMENT_HEADERS)

    @get("/docs", sync_to_thread=False, include_in_schema=False)
    def docs_page() -> Response[str]:
        return Response(page, media_type=MediaType.HTML, headers=page_headers)

    @get("/docs/{asset_version:str}/{name:str}", sync_to_thread=False, include_in_schema=False)
    def docs_asset(asset_version: str, name: str) -> Response[bytes]:
        asset = assets.get(name)
        if asset is None or asset_version != version:
            raise NotFoundException()
        body, content_type = asset
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
        return Response(body, media_type=content_type, headers=headers)

    return [openapi_document, asyncapi_endpoint, docs_page, docs_asset]
