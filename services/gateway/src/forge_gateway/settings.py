"""Typed FORGE_* settings of the gateway, validated at start-up."""

from __future__ import annotations

from forge_common.settings import CommonSettings

from .token_exchange import MAX_LIFETIME, WorkloadKey, load_trusted_issuers
from .versioning import load_deprecations

__all__ = ["Settings"]


class Settings(CommonSettings, kw_only=True):
    """The gateway holds nothing durable: no database, no NATS; only its upstreams and limits."""

    port: int = 8080
    pipeline_url: str = "http://127.0.0.1:8081"
    release_url: str = "http://127.0.0.1:8082"
    deployment_url: str = "http://127.0.0.1:8083"
    approval_url: str = "http://127.0.0.1:8084"
    # Time an upstream may take to send its response headers (and between two reads of a body).
    upstream_timeout: float = 30.0
    upstream_connect_timeout: float = 5.0
    # Keep-alive connections per upstream; idle ones are dropped before uvicorn's own 5 s timeout.
    upstream_pool_size: int = 512
    upstream_keepalive: float = 4.0
    # Longest wait for a free connection slot before a 503 (instead of queueing without end).
    upstream_slot_wait: float = 5.0
    # Slots per upstream that requests with streamed (large or chunked) bodies may hold at once.
    upstream_stream_slots: int = 64
    # A client that sends no body bytes for this long, or not the whole body within the second
    # limit, gets a 408: reading from clients is bounded like everything else.
    client_idle_timeout: float = 10.0
    client_body_timeout: float = 120.0
    # Requests of one user (token sub) in flight at once -> 429 beyond. Half the upstream pool:
    # one user never holds every connection, and 100+ concurrent creates (the spec's per-repository
    # run limit) still fit.
    user_max_concurrent: int = 256
    # Streams (GET /v1/runs/{id}/events, /v1/events, /v1/steps/{id}/logs?follow=true) are cut
    # only after this long without a byte from the service (SSE heartbeats come every 15 s), and
    # one user may hold at most user_max_streams of them open at once (429 beyond). Each ends when
    # the token that opened it expires (proxy.Proxy._relay).
    stream_idle_timeout: float = 600.0
    user_max_streams: int = 20
    max_body_bytes: int = 10 * 1024 * 1024
    # Largest non-streaming response relayed (see forge_gateway.response_limit).
    max_response_bytes: int = 50 * 1024 * 1024
    # TOML file of deprecated operations (forge_gateway.versioning); empty: none.
    deprecations: str = ""
    rate_limit: int = 1000
    rate_limit_window: float = 60.0
    # Minimum interval between two JWKS fetches triggered by unknown key ids.
    jwks_refresh_interval: float = 5.0
    access_log: bool = True
    # Workload identity (forge_gateway.token_exchange): the TOML file of trusted external OIDC
    # issuers and their rules; empty: POST /v1/auth/token answers 404. Exchanged tokens are
    # issued as FORGE_WORKLOAD_ISSUER (default FORGE_PUBLIC_URL), signed with the PEM private
    # key at FORGE_WORKLOAD_SIGNING_KEY (every replica needs the same; empty: a key generated at
    # start, for a single gateway), and live FORGE_WORKLOAD_TOKEN_LIFETIME (at most 15m).
    trusted_issuers: str = ""
    workload_signing_key: str = ""
    workload_token_lifetime: float = float(MAX_LIFETIME)
    # Web console (served at /): the issuer and public client its "Log in" button uses. The issuer
    # defaults to FORGE_OIDC_ISSUER; set it when browsers reach the issuer at another address.
    console_enabled: bool = True
    console_oidc_issuer: str = ""
    console_oidc_client_id: str = "forge-cli"
    # Extra origins (space-separated) the console's fetch() may reach besides the gateway, the
    # issuer and FORGE_S3_URL, e.g. the public address of the log store behind logs_url.
    console_connect_src: str = ""

    @property
    def token_issuer(self) -> str:
        """The ``iss`` of exchanged tokens (what services trust as FORGE_WORKLOAD_ISSUER)."""
        return (self.workload_issuer or self.public_url).rstrip("/")

    def validate(self) -> list[str]:
        problems = super().validate()
        for name in ("pipeline_url", "release_url", "deployment_url", "approval_url"):
            value = getattr(self, name)
            if not value.startswith(("http://", "https://")):
                problems.append(f"FORGE_{name.upper()}={value!r}: must be an http:// or https:// URL")
        if self.upstream_timeout <= 0:
            problems.append("FORGE_UPSTREAM_TIMEOUT must be positive (seconds or a duration such as 30s)")
        if self.upstream_connect_timeout <= 0:
            problems.append("FORGE_UPSTREAM_CONNECT_TIMEOUT must be positive")
        if self.upstream_pool_size < 1:
            problems.append("FORGE_UPSTREAM_POOL_SIZE must be >= 1")
        for name in ("upstream_slot_wait", "client_idle_timeout", "client_body_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"FORGE_{name.upper()} must be positive")
        if self.upstream_stream_slots < 1:
            problems.append("FORGE_UPSTREAM_STREAM_SLOTS must be >= 1")
        if self.user_max_concurrent < 1:
            problems.append("FORGE_USER_MAX_CONCURRENT must be >= 1")
        if self.stream_idle_timeout < 20:
            problems.append("FORGE_STREAM_IDLE_TIMEOUT must be at least 20s (SSE heartbeats come every 15 s)")
        if self.user_max_streams < 1:
            problems.append("FORGE_USER_MAX_STREAMS must be >= 1")
        if self.max_body_bytes < 1:
            problems.append("FORGE_MAX_BODY_BYTES must be >= 1")
        if self.max_response_bytes < 1:
            problems.append("FORGE_MAX_RESPONSE_BYTES must be >= 1")
        try:
            load_deprecations(self.deprecations)
        except (OSError, ValueError) as exc:
            problems.append(f"FORGE_DEPRECATIONS={self.deprecations!r}: {exc}")
        try:
            load_trusted_issuers(self.trusted_issuers)
        except ValueError as exc:
            problems.append(f"FORGE_TRUSTED_ISSUERS={self.trusted_issuers!r}: {exc}")
        if not (60 <= self.workload_token_lifetime <= MAX_LIFETIME):
            problems.append("FORGE_WORKLOAD_TOKEN_LIFETIME must be between 1m and 15m")
        if self.workload_signing_key:
            try:
                WorkloadKey(self.workload_signing_key)
            except (OSError, ValueError, TypeError) as exc:
                problems.append(f"FORGE_WORKLOAD_SIGNING_KEY={self.workload_signing_key!r}: {exc}")
        if self.rate_limit < 1:
            problems.append("FORGE_RATE_LIMIT must be >= 1")
        if self.rate_limit_window <= 0:
            problems.append("FORGE_RATE_LIMIT_WINDOW must be positive")
        if self.jwks_refresh_interval < 0:
            problems.append("FORGE_JWKS_REFRESH_INTERVAL must not be negative")
        if self.console_oidc_issuer and not self.console_oidc_issuer.startswith(("http://", "https://")):
            problems.append(
                f"FORGE_CONSOLE_OIDC_ISSUER={self.console_oidc_issuer!r}: must be an http:// or https:// URL"
            )
        for origin in self.console_connect_src.split():
            if not origin.startswith(("http://", "https://")):
                problems.append(f"FORGE_CONSOLE_CONNECT_SRC: {origin!r} is not an http:// or https:// origin")
        return problems
