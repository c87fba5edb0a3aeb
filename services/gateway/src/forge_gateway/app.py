"""Wiring of the gateway: the raw ``/v1`` proxy in front, a small Litestar app for the rest.

``/v1/*`` never touches the framework (see :mod:`forge_gateway.proxy`); ``/healthz``,
``/readyz``, ``/metrics``, the API's documents (``/schema/openapi.json``, ``/docs``) and every other
path go to Litestar with the
platform's exception handlers and observability middleware, so they answer like every service.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from forge_common import metrics
from forge_common.auth import JwksCache, LocalKeySet, TokenVerifier
from forge_common.errors import NotFound
from forge_common.http import EXCEPTION_HANDLERS, ObservabilityMiddleware
from forge_common.openapi import body_operation, errors, response
from forge_common.tracing import configure_tracing, flush_tracing

from .apidocs import contract_handlers
from .console import browser_run_redirect, console_handlers
from .proxy import Proxy
from .settings import Settings
from .token_exchange import (
    GRANT_TYPE,
    IssuerConfig,
    TokenExchange,
    TokenExchangeRequest,
    TokenExchangeResponse,
    WorkloadKey,
    load_trusted_issuers,
)
from .versioning import API_VERSIONS

log = structlog.get_logger(__name__)

__all__ = ["META_PATH", "TOKEN_PATH", "GatewayApp", "GatewayMeta", "create_app"]

# Every API version's paths go to the proxy: /v1/..., and /v2/... once versioning.py lists it.
_API_PREFIXES = tuple(f"/{version}/" for version in API_VERSIONS)
_API_ROOTS = frozenset(f"/{version}" for version in API_VERSIONS)

# Public (no token): what a client needs before it has a token, i.e. which issuer to log in at.
META_PATH = "/v1/meta"
# Public too: the RFC 8693 token exchange authenticates by the subject token in its body.
TOKEN_PATH = "/v1/auth/token"  # noqa: S105 - a path, not a secret
_OWN_PATHS = frozenset({META_PATH, TOKEN_PATH})


class GatewayMeta(msgspec.Struct, kw_only=True):
    """Where clients log in: the issuer (OpenID Connect discovery) and the audience tokens carry."""

    example: ClassVar[dict[str, Any]] = {
        "oidc_issuer": "http://127.0.0.1:8180/realms/forge",
        "oidc_audience": "forge-api",
    }

    oidc_issuer: str
    oidc_audience: str


class GatewayApp:
    """The ASGI entry point: one prefix test decides between the proxy and Litestar."""

    def __init__(self, proxy: Proxy, rest: Litestar) -> None:
        self.proxy = proxy
        self.rest = rest

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if (path.startswith(_API_PREFIXES) or path in _API_ROOTS) and path not in _OWN_PATHS:
                if path.startswith("/v1/runs/") and (page := browser_run_redirect(scope)):
                    await _redirect(send, page)
                    return
                await self.proxy(scope, receive, send)
                return
        await self.rest(scope, receive, send)


async def _redirect(send: Any, location: str) -> None:
    headers = [(b"location", location.encode()), (b"content-length", b"0"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _health_routes(proxy: Proxy) -> list[Any]:
    """``/healthz``, ``/readyz`` and ``/metrics``: the gateway answers them like every service."""

    @get("/healthz", sync_to_thread=False, summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="Readiness of the gateway (503 while starting or stopping), with its upstreams' health")
    async def readyz() -> Response[dict[str, Any]]:
        # Readiness is the gateway's own: one service being down must not take every gateway
        # replica out of its load balancer. The upstreams' health is reported, not enforced;
        # requests to a down service get their own 502/503.
        checks = await proxy.readiness()
        ready = proxy.started
        body = {
            "status": "ok" if ready else "unavailable",
            "upstreams": "ok" if all(v == "ok" for v in checks.values()) else "degraded",
            "checks": checks,
        }
        return Response(body, status_code=200 if ready else 503)

    @get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response[bytes]:
        return Response(await metrics.collect(), media_type=metrics.CONTENT_TYPE_LATEST)

    return [healthz, readyz, metrics_endpoint]


def _identity_routes(
    settings: Settings, issuers: list[IssuerConfig], key: WorkloadKey, exchange: TokenExchange
) -> list[Any]:
    """Where clients log in (``/v1/meta``), and the gateway as the issuer of workload tokens:
    the RFC 8693 exchange, its JWKS and its OpenID configuration."""

    @get(
        META_PATH,
        sync_to_thread=False,
        summary="Which issuer and audience tokens come from",
        responses={200: response(GatewayMeta, "the issuer and audience")},
    )
    def meta() -> GatewayMeta:
        return GatewayMeta(oidc_issuer=settings.oidc_issuer, oidc_audience=settings.oidc_audience)

    @get("/.well-known/jwks.json", sync_to_thread=False, include_in_schema=False)
    def workload_jwks() -> Response[dict[str, Any]]:
        return Response(key.jwks(), headers={"Cache-Control": "public, max-age=300"})

    @get("/.well-known/openid-configuration", sync_to_thread=False, include_in_schema=False)
    def workload_discovery() -> dict[str, Any]:
        issuer = settings.token_issuer
        return {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "token_endpoint": f"{issuer}{TOKEN_PATH}",
            "grant_types_supported": [GRANT_TYPE],
            "id_token_signing_alg_values_supported": [key.algorithm],
        }

    return [meta, _token_exchange_route(issuers, exchange), workload_jwks, workload_discovery]


def _token_exchange_route(issuers: list[IssuerConfig], exchange: TokenExchange) -> Any:
    """``POST /v1/auth/token``: the RFC 8693 exchange, with its documented form and errors."""

    @post(
        TOKEN_PATH,
        status_code=200,
        operation_id="exchangeToken",
        summary="RFC 8693 token exchange: a trusted CI job's OIDC token for a Forge token (docs/api.md)",
        description="No bearer token: the subject token is the credential. Every error is the platform's "
        "envelope; `details.oauth_error` carries the RFC 6749 error code (`invalid_request`, "
        "`unsupported_grant_type`, `invalid_grant`).",
        # The handler parses the form itself (each field once, 64 KiB at most); the document
        # names its fields.
        operation_class=body_operation(
            TokenExchangeRequest,
            "the token exchange form (RFC 8693 section 2.1)",
            media_type="application/x-www-form-urlencoded",
        ),
        responses={
            200: response(TokenExchangeResponse, "a Forge access token for the subject token's repository"),
            **errors(
                {
                    400: "not form-encoded, a parameter repeated or missing, or a `grant_type` or "
                    "`subject_token_type` other than the token exchange's (`details.oauth_error`)",
                    401: "the subject token is no JWT, expired, not for this platform's audience, from an "
                    "issuer not trusted, or signed with a key its issuer does not publish",
                    403: "no rule of the issuer grants a role to this token, or its repository claim "
                    "names no repository",
                    404: "workload identity is not configured on this platform (`FORGE_TRUSTED_ISSUERS`)",
                    503: "the trusted issuer's key set could not be fetched; retry later",
                }
            ),
        },
        opt={"public": True},
    )
    async def token(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """Form-encoded ``grant_type``, ``subject_token``, ``subject_token_type``; answers
        ``access_token``, ``issued_token_type``, ``token_type``, ``expires_in`` (at most 900)."""
        if not issuers:
            raise NotFound("workload identity is not configured on this platform (FORGE_TRUSTED_ISSUERS)")
        answer = await exchange.exchange(request.headers.get("content-type", ""), await request.body())
        return Response(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    return token


def create_app(settings: Settings) -> GatewayApp:
    exporter = configure_tracing("gateway", settings.otel_exporter)
    jwks = JwksCache(settings.jwks_url)
    jwks.min_refresh_interval = settings.jwks_refresh_interval
    issuers = load_trusted_issuers(settings.trusted_issuers)
    key = WorkloadKey(settings.workload_signing_key, in_use=bool(issuers))
    exchange = TokenExchange(
        issuers, key, settings.token_issuer, settings.oidc_audience, settings.workload_token_lifetime
    )
    # The gateway accepts the tokens it issues with its own key in hand (no fetch from itself).
    workload = {settings.token_issuer: LocalKeySet({key.kid: key.pyjwk()})}
    verifier = TokenVerifier(settings.oidc_issuer, settings.oidc_audience, jwks, also_trusted=workload)
    proxy = Proxy(settings, verifier, sdk_spans=exporter != "none")

    async def start(_: Litestar) -> None:
        await proxy.start()

    async def stop(_: Litestar) -> None:
        await proxy.stop()
        log.info("service.stopped")
        flush_tracing()

    rest = Litestar(
        route_handlers=[
            *_health_routes(proxy),
            *_identity_routes(settings, issuers, key, exchange),
            *contract_handlers(),
            *console_handlers(settings),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        on_startup=[start],
        on_shutdown=[stop],
        # The gateway's own operations; forge_gateway.contract merges them with the services'.
        openapi_config=OpenAPIConfig(
            title="Forge gateway", version="1.0.0", path="/schema/gateway", render_plugins=[JsonRenderPlugin()]
        ),
        logging_config=None,
        debug=False,
    )
    rest.asgi_handler = ObservabilityMiddleware(rest.asgi_handler, "gateway")
    return GatewayApp(proxy, rest)
