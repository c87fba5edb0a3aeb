"""The gateway's own OpenAPI document.

It describes what the gateway adds (authentication, limits, routing, its own errors); the
shapes of the proxied resources are in each service's ``/schema/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from .proxy import ROUTES, WEBHOOK_PATH
from .settings import Settings

__all__ = ["openapi_document"]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    rate_headers = {
        "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "requests allowed per window"},
        "X-RateLimit-Remaining": {"schema": {"type": "integer"}, "description": "requests left in the window"},
        "X-RateLimit-Reset": {
            "schema": {"type": "integer"},
            "description": "Unix time (s) when the oldest counted request leaves the window",
        },
    }
    proxied_responses = {
        "2XX": {"description": "the upstream service's answer, streamed through", "headers": rate_headers},
        "401": _error("missing, expired, malformed or foreign bearer token"),
        "404": _error("no API route matches the path"),
        "413": _error(f"request body larger than {settings.max_body_bytes} bytes"),
        "429": {
            **_error(f"more than {settings.rate_limit} requests in {settings.rate_limit_window:g} s by one user"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}, **rate_headers},
        },
        "502": _error("the upstream service is unreachable"),
        "504": _error(f"the upstream service did not answer within {settings.upstream_timeout:g} s"),
    }
    paths: dict[str, Any] = {}
    for segment, service in ROUTES.items():
        paths[f"/v1/{segment}/{{rest}}"] = {
            "summary": f"proxied to the {service} service",
            "parameters": [
                {"name": "rest", "in": "path", "required": True, "schema": {"type": "string"}, "allowReserved": True}
            ],
            **{
                method: {"tags": [service], "security": [{"bearer": []}], "responses": proxied_responses}
                for method in ("get", "post", "put", "delete")
            },
        }
    paths[WEBHOOK_PATH] = {
        "post": {
            "tags": ["pipeline"],
            "summary": "GitHub webhook; no bearer token, the pipeline service checks its HMAC signature",
            "security": [],
            "responses": {k: v for k, v in proxied_responses.items() if k != "401"},
        }
    }
    paths["/v1/auth/token"] = {
        "post": {
            "tags": ["auth"],
            "summary": "RFC 8693 token exchange: a trusted CI job's OIDC token for a short-lived Forge token",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["grant_type", "subject_token", "subject_token_type"],
                            "properties": {
                                "grant_type": {"const": "urn:ietf:params:oauth:grant-type:token-exchange"},
                                "subject_token": {"type": "string"},
                                "subject_token_type": {"const": "urn:ietf:params:oauth:token-type:jwt"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "the Forge access token (at most 15 minutes, bound to one repository)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["access_token", "issued_token_type", "token_type", "expires_in"],
                                "properties": {
                                    "access_token": {"type": "string"},
                                    "issued_token_type": {"type": "string"},
                                    "token_type": {"const": "Bearer"},
                                    "expires_in": {"type": "integer", "maximum": 900},
                                },
                            }
                        }
                    },
                },
                "400": _error("not form-encoded, or a wrong grant_type / subject_token_type"),
                "401": _error("the subject token is expired, for another audience, or from an untrusted issuer"),
                "403": _error("no rule of the issuer grants this token a role"),
                "404": _error("workload identity is not configured (FORGE_TRUSTED_ISSUERS)"),
                "503": _error("the issuer's key set cannot be fetched"),
            },
        }
    }
    for path, summary in (("/healthz", "liveness"), ("/readyz", "readiness: every upstream's /healthz answers")):
        paths[path] = {"get": {"summary": summary, "security": [], "responses": {"200": {"description": "ok"}}}}
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {"200": {"description": "text exposition format"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Forge gateway", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "details"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "object"},
                            },
                        }
                    },
                }
            },
        },
        "security": [{"bearer": []}],
    }
