"""Typed ``FORGE_*`` settings read from the environment and validated at start-up.

A service declares a :class:`msgspec.Struct` whose fields are its settings; :func:`load`
reads ``FORGE_<FIELD>`` for every field, converts each value, and reports *every* bad value
at once in a :class:`SettingsError` so an operator fixes them in one go.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from .github import GitHubConfig

__all__ = ["CommonSettings", "SettingsError", "load", "parse_duration", "parse_size"]

T = TypeVar("T", bound=msgspec.Struct)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``90s``, ``10m``, ``1h30m``, ``250ms``, ``7d``) into seconds."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and (s[j].isdigit() or s[j] == "."):
            j += 1
        if j == i:
            raise ValueError(f"invalid duration {text!r}: expected a number at {s[i:]!r}")
        number = float(s[i:j])
        k = j
        while k < len(s) and s[k].isalpha():
            k += 1
        unit = s[j:k]
        if unit not in _UNITS:
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (use ms, s, m, h, d)")
        total += number * _UNITS[unit]
        i = k
    return total


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS.update(
    {p: 1 << (10 * (i + 1)) for i, letter in enumerate("kmgt") for p in (letter, letter + "i", letter + "ib")}
)


def parse_size(text: str | int) -> int:
    """Parse a size in bytes: ``512MiB``, ``2GiB``, ``512Mi``, ``1.5G`` (K, M, G, T and their
    ``i``/``iB`` forms are powers of 1024; KB, MB, GB, TB powers of 1000) or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must not be negative")
        return text
    if not isinstance(text, str):
        raise ValueError(f'invalid size {text!r}: use a string like "512MiB" or "2GiB"')
    s = text.strip()
    number = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
    unit = s[len(number) :].strip().lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: unknown unit {s[len(number) :].strip()!r} (use KiB, MiB, GiB or TiB)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f'invalid size {text!r}: use a number and a unit, like "512MiB" or "2GiB"') from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"invalid size {text!r}: must be a positive number")
    return int(value * _SIZE_UNITS[unit])


class SettingsError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def load(cls: type[T], environ: Mapping[str, str] | None = None, prefix: str = "FORGE_") -> T:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in msgspec.structs.fields(cls):
        name = prefix + field.name.upper()
        raw = env.get(name)
        if raw is None or raw == "":
            if field.required:
                problems.append(f"{name} is required")
            continue
        try:
            values[field.name] = _convert(raw, field.type)
        except (msgspec.ValidationError, ValueError) as exc:
            problems.append(f"{name}={raw!r}: {exc}")
    if problems:
        raise SettingsError(problems)
    try:
        settings = msgspec.convert(values, cls)
    except msgspec.ValidationError as exc:
        raise SettingsError([str(exc)]) from exc
    post = getattr(settings, "validate", None)
    if callable(post):
        more = post()
        if more:
            raise SettingsError(list(more))
    return settings


def _convert(raw: str, typ: Any) -> Any:
    if typ is float and raw[-1:].isalpha():
        return parse_duration(raw)
    return msgspec.convert(raw, typ, strict=False)


class CommonSettings(msgspec.Struct, kw_only=True):
    """Settings every service shares. Services subclass this and add their own fields."""

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "postgresql://postgres@127.0.0.1:5432/forge"
    db_pool_min: int = 2
    db_pool_max: int = 10
    nats_url: str = "nats://127.0.0.1:4222"
    # Prefix for every stream name and subject; empty in production. Tests use one per session
    # so several suites can share one NATS server.
    nats_prefix: str = ""
    # NATS credentials of this process's identity (docs/operations.md, "NATS credentials"): a
    # user and password, or an NKey/JWT ``.creds`` file. Credentials inside FORGE_NATS_URL
    # (nats://user:password@host:4222) work as well. All empty: an anonymous connection, which
    # only a server without authentication accepts.
    nats_user: str = ""
    nats_password: str = ""
    nats_creds: str = ""
    s3_url: str = ""
    s3_bucket: str = "forge"
    s3_region: str = "us-east-1"
    s3_access_key: str = "forge"
    s3_secret_key: str = "forge-secret"  # noqa: S105 - the embedded dev S3 accepts any key
    # Temporary credentials (AWS STS, IRSA, MinIO STS): sent with every request and in presigned URLs.
    s3_session_token: str = ""
    # Where clients outside the cluster reach the object store: presigned URLs (step logs) are
    # signed for this address instead of FORGE_S3_URL (an in-cluster name users cannot resolve).
    s3_public_url: str = ""
    oidc_issuer: str = "http://127.0.0.1:8180/realms/forge"
    oidc_audience: str = "forge"
    oidc_jwks_url: str = ""
    # The gateway's workload issuer (POST /v1/auth/token): its tokens are accepted besides the
    # realm's, checked against the key set at FORGE_WORKLOAD_JWKS_URL (default: the issuer's
    # /.well-known/jwks.json). Empty: only realm tokens are accepted.
    workload_issuer: str = ""
    workload_jwks_url: str = ""
    log_level: str = "info"
    log_format: str = "json"
    environment: str = "dev"
    otel_exporter: str = "none"
    # How long published outbox rows are kept before the relay purges them (a duration).
    outbox_retention: float = 7 * 86400.0
    # GitHub REST API (forge_common.github): commit statuses (pipeline, release) and deployments
    # (deployment service). Empty token: GitHub reporting is off. The sender looks for due calls
    # every poll interval and gives one up after max attempts (retried with backoff up to then).
    github_api_url: str = "https://api.github.com"
    github_token: str = ""
    github_status_poll_interval: float = 0.5
    github_status_max_attempts: int = 8
    # Public base URL of the platform (the gateway); links sent to GitHub start with it.
    public_url: str = "http://127.0.0.1:8080"
    # Apply pending migrations when the service starts (`make run`, compose). The Helm charts
    # turn it off and run `forge-<service> migrate` as a Job before the pods roll instead.
    migrate_on_start: bool = True

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not (0 < self.port < 65536):
            problems.append(f"FORGE_PORT={self.port}: must be between 1 and 65535")
        if self.log_level.lower() not in {"debug", "info", "warning", "warn", "error"}:
            problems.append(f"FORGE_LOG_LEVEL={self.log_level!r}: use debug, info, warning or error")
        if self.environment not in {"dev", "staging", "production"}:
            problems.append(f"FORGE_ENVIRONMENT={self.environment!r}: use dev, staging or production")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            problems.append("FORGE_DATABASE_URL must be a postgresql:// URL")
        if not self.nats_url.startswith(("nats://", "tls://")):
            problems.append("FORGE_NATS_URL must be a nats:// URL")
        if self.nats_password and not self.nats_user:
            problems.append("FORGE_NATS_PASSWORD is set without FORGE_NATS_USER")
        if self.nats_creds and not os.path.isfile(self.nats_creds):
            problems.append(f"FORGE_NATS_CREDS={self.nats_creds!r}: no such file")
        if self.db_pool_min < 1 or self.db_pool_max < self.db_pool_min:
            problems.append("FORGE_DB_POOL_MIN must be >= 1 and <= FORGE_DB_POOL_MAX")
        if self.workload_issuer and not self.workload_issuer.startswith(("http://", "https://")):
            problems.append("FORGE_WORKLOAD_ISSUER must be an http(s) URL (the gateway's public address)")
        if not self.github_api_url.startswith(("http://", "https://")):
            problems.append("FORGE_GITHUB_API_URL must be an http(s) URL")
        if self.github_status_max_attempts < 1:
            problems.append("FORGE_GITHUB_STATUS_MAX_ATTEMPTS must be >= 1")
        if self.github_status_poll_interval <= 0:
            problems.append("FORGE_GITHUB_STATUS_POLL_INTERVAL must be a positive duration")
        for name in ("s3_url", "s3_public_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                problems.append(f"FORGE_{name.upper()}={value!r}: must be an http:// or https:// URL")
        if self.otel_exporter not in ("none", "console", "otlp"):
            problems.append(f"FORGE_OTEL_EXPORTER={self.otel_exporter!r}: use none, console or otlp")
        if self.outbox_retention <= 0:
            problems.append("FORGE_OUTBOX_RETENTION must be a positive duration such as 7d or 36h")
        return problems

    def github_config(self, service: str, **values: str) -> GitHubConfig:
        return GitHubConfig(
            api_url=self.github_api_url,
            token=self.github_token,
            public_url=self.public_url,
            poll_interval=self.github_status_poll_interval,
            max_attempts=self.github_status_max_attempts,
            retention=self.outbox_retention,
            values=values,
            user_agent=f"forge-{service}",
        )

    @property
    def workload_keys_url(self) -> str:
        return self.workload_jwks_url or f"{self.workload_issuer.rstrip('/')}/.well-known/jwks.json"

    @property
    def jwks_url(self) -> str:
        return self.oidc_jwks_url or f"{self.oidc_issuer.rstrip('/')}/protocol/openid-connect/certs"
