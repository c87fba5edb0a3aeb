"""Workload identity: RFC 8693 token exchange at ``POST /v1/auth/token``.

A CI job (a GitHub Actions workflow, any workload with an OIDC token) sends its token from a
trusted external issuer as ``subject_token`` and gets a short-lived Forge access token back, so
it needs no long-lived Forge secret. The subject token is verified here: signature against the
issuer's JWKS (pyjwt's :class:`jwt.PyJWKClient`), issuer, audience, expiry. Then the issuer's
rules are tried in order; the first whose every claim glob matches gives the role, and the
claim it names (``repository_claim``) gives the one repository the new token may act on
(``forge_repository``). The Forge token is signed by the gateway's workload key, issued by
``FORGE_WORKLOAD_ISSUER``, lives at most 15 minutes, and every service accepts it (they trust
that issuer's key set, served at ``/.well-known/jwks.json``) and refuses it, with a 403, any
operation on another repository.

Trusted issuers come from the TOML file named by ``FORGE_TRUSTED_ISSUERS``::

    [[issuers]]
    issuer = "https://token.actions.githubusercontent.com"
    jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
    audience = "forge"
    [[issuers.rules]]
    claims = { repository = "acme/*", ref = "refs/heads/main" }
    role = "developer"
    repository_claim = "repository"
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import json
import re
import time
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs

import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from forge_common.auth import ACCESS_TOKEN_TYPE, ALLOWED_ALGORITHMS, REPOSITORY_CLAIM, USER_ROLES
from forge_common.errors import AuthenticationFailed, AuthorizationFailed, InvalidRequest, PayloadTooLarge, unavailable

__all__ = [
    "GRANT_TYPE",
    "ISSUED_TOKEN_TYPE",
    "SUBJECT_TOKEN_TYPE",
    "IssuerConfig",
    "Rule",
    "TokenExchange",
    "TokenExchangeRequest",
    "TokenExchangeResponse",
    "WorkloadKey",
    "load_trusted_issuers",
]

log = structlog.get_logger("forge_gateway.token_exchange")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN, not a secret
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
MAX_LIFETIME = 15 * 60
MAX_REQUEST_BYTES = 64 * 1024
# The roles a rule may grant: a workload acts as a user of one repository. Never a worker, never
# an admin (that spans every repository), never an approver (approvals are people's decisions).
GRANTABLE_ROLES = frozenset({"viewer", "developer"}) & USER_ROLES
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# A subject token with a key id its issuer's key set lacks makes us fetch the set again, at most
# this often per issuer: unknown kids cannot make the gateway hammer an identity provider.
_MIN_REFRESH_SECONDS = 5.0


class TokenExchangeRequest(msgspec.Struct, kw_only=True):
    """The RFC 8693 token exchange form (application/x-www-form-urlencoded); each field once."""

    example: ClassVar[dict[str, str]] = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJyZXBvc2l0b3J5IjoiYWNtZS9hcHAifQ.c2ln",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }

    grant_type: Annotated[
        Literal["urn:ietf:params:oauth:grant-type:token-exchange"],
        msgspec.Meta(description="always `urn:ietf:params:oauth:grant-type:token-exchange`"),
    ]
    subject_token: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="the workload's OIDC token (a JWT) from a trusted issuer (`FORGE_TRUSTED_ISSUERS`)",
        ),
    ]
    subject_token_type: Annotated[
        Literal["urn:ietf:params:oauth:token-type:jwt"],
        msgspec.Meta(description="always `urn:ietf:params:oauth:token-type:jwt`"),
    ]


class TokenExchangeResponse(msgspec.Struct, kw_only=True):
    """The RFC 8693 answer: a Forge access token bound to one repository (claim forge_repository)."""

    example: ClassVar[dict[str, Any]] = {
        "access_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZvcmdlIn0.eyJmb3JnZV9yZXBvc2l0b3J5IjoiYWNtZS9hcHAifQ.c2ln",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": 900,
    }

    access_token: Annotated[str, msgspec.Meta(description="use as `Authorization: Bearer <access_token>`")]
    issued_token_type: Literal["urn:ietf:params:oauth:token-type:access_token"]
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=900, description="seconds the token lives (at most 900)")]


class Rule(msgspec.Struct):
    role: str
    claims: dict[str, str] = msgspec.field(default_factory=dict)
    repository_claim: str = "repository"


class IssuerConfig(msgspec.Struct):
    issuer: str
    jwks_url: str
    audience: str
    rules: list[Rule] = msgspec.field(default_factory=list)


class _TrustedIssuers(msgspec.Struct):
    issuers: list[IssuerConfig] = msgspec.field(default_factory=list)


def load_trusted_issuers(path: str) -> list[IssuerConfig]:
    """The issuers of ``path`` (empty path: none); ValueError naming every problem."""
    if not path:
        return []
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        issuers = msgspec.convert(raw, _TrustedIssuers).issuers
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(str(exc)) from exc
    problems: list[str] = []
    seen: set[str] = set()
    for index, issuer in enumerate(issuers):
        where = f"issuers[{index}]"
        if not issuer.issuer or issuer.issuer.rstrip("/") in seen:
            problems.append(f"{where}: issuer must be set and appear once")
        seen.add(issuer.issuer.rstrip("/"))
        if not issuer.jwks_url.startswith(("https://", "http://")):
            problems.append(f"{where}: jwks_url must be an http(s) URL")
        if not issuer.audience:
            problems.append(f"{where}: audience must be set (the aud your CI job requests, e.g. forge)")
        if not issuer.rules:
            problems.append(f"{where}: no rules: no token of this issuer could be exchanged")
        for r_index, rule in enumerate(issuer.rules):
            if rule.role not in GRANTABLE_ROLES:
                problems.append(f"{where}.rules[{r_index}]: role {rule.role!r} is not one of {sorted(GRANTABLE_ROLES)}")
            if not rule.repository_claim:
                problems.append(f"{where}.rules[{r_index}]: repository_claim must name a claim")
    if problems:
        raise ValueError("; ".join(problems))
    return issuers


class WorkloadKey:
    """The gateway's signing key for exchanged tokens (RSA or EC P-256, from a PEM file; a fresh
    one when no file is configured, which only suits a single gateway replica)."""

    def __init__(self, path: str, in_use: bool = True) -> None:
        if path:
            loaded = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        else:
            if in_use:
                log.warning(
                    "workload.ephemeral_key", reason="FORGE_WORKLOAD_SIGNING_KEY not set; tokens die with this process"
                )
            loaded = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if isinstance(loaded, rsa.RSAPrivateKey):
            self.algorithm = "RS256"
            public = jwt.algorithms.RSAAlgorithm.to_jwk(loaded.public_key(), as_dict=True)
        elif isinstance(loaded, ec.EllipticCurvePrivateKey) and loaded.curve.name == "secp256r1":
            self.algorithm = "ES256"
            public = jwt.algorithms.ECAlgorithm.to_jwk(loaded.public_key(), as_dict=True)
        else:
            raise ValueError("FORGE_WORKLOAD_SIGNING_KEY must be an RSA or EC P-256 private key in PEM")
        self.private_key = loaded
        self.kid = _thumbprint(public)
        self.public_jwk: dict[str, Any] = {**public, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def pyjwk(self) -> jwt.PyJWK:
        return jwt.PyJWK(self.public_jwk)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: a key id derived from the key itself, the same on every replica."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


class _IssuerKeys:
    """One trusted issuer's key set, through pyjwt's PyJWKClient (blocking: run in a thread)."""

    def __init__(self, jwks_url: str) -> None:
        self.client = jwt.PyJWKClient(jwks_url, cache_keys=False, lifespan=300, timeout=5)
        self._refreshed_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            try:
                found = self._find(await asyncio.to_thread(self.client.get_jwk_set), kid)
                if found is None and time.monotonic() - self._refreshed_at >= _MIN_REFRESH_SECONDS:
                    self._refreshed_at = time.monotonic()
                    found = self._find(await asyncio.to_thread(self.client.get_jwk_set, True), kid)
            except jwt.PyJWKClientConnectionError as exc:
                raise unavailable("trusted issuer", "its key set could not be fetched") from exc
            except jwt.PyJWTError as exc:  # an answer that is no key set (PyJWKSetError and kin)
                raise unavailable("trusted issuer", f"its key set is unusable: {exc}") from exc
        if found is None:
            raise AuthenticationFailed("subject_token is signed with a key its issuer does not publish", {"kid": kid})
        return found

    @staticmethod
    def _find(jwk_set: jwt.PyJWKSet, kid: str) -> jwt.PyJWK | None:
        return next((k for k in jwk_set.keys if k.key_id == kid), None)


class TokenExchange:
    def __init__(
        self,
        issuers: list[IssuerConfig],
        key: WorkloadKey,
        workload_issuer: str,
        audience: str,
        lifetime: float = MAX_LIFETIME,
        leeway: float = 10.0,
    ) -> None:
        self.issuers = {i.issuer.rstrip("/"): i for i in issuers}
        self._keys = {name: _IssuerKeys(i.jwks_url) for name, i in self.issuers.items()}
        self.key = key
        self.workload_issuer = workload_issuer.rstrip("/")
        self.audience = audience
        self.lifetime = int(min(lifetime, MAX_LIFETIME))
        self.leeway = leeway

    async def exchange(self, content_type: str, body: bytes) -> dict[str, Any]:
        """The RFC 8693 answer for a form-encoded request ``body``."""
        form = _form(content_type, body)
        if form.get("grant_type") != GRANT_TYPE:
            raise InvalidRequest(
                f"grant_type must be {GRANT_TYPE}", {"field": "grant_type", "oauth_error": "unsupported_grant_type"}
            )
        if form.get("subject_token_type") != SUBJECT_TOKEN_TYPE:
            raise InvalidRequest(
                f"subject_token_type must be {SUBJECT_TOKEN_TYPE}",
                {"field": "subject_token_type", "oauth_error": "invalid_request"},
            )
        subject_token = form.get("subject_token", "")
        if not subject_token:
            raise InvalidRequest(
                "subject_token is required", {"field": "subject_token", "oauth_error": "invalid_request"}
            )
        claims, issuer = await self._verify(subject_token)
        rule = _first_matching(issuer, claims)
        repository = claims.get(rule.repository_claim)
        if not isinstance(repository, str) or not _REPOSITORY.match(repository):
            raise AuthorizationFailed(
                f"the subject token's {rule.repository_claim!r} claim does not name a repository (owner/name)",
                {"claim": rule.repository_claim, "oauth_error": "invalid_grant"},
            )
        token = self._issue(claims, issuer, rule.role, repository)
        log.info(
            "workload.token_issued",
            issuer=issuer.issuer,
            sub=str(claims.get("sub")),
            role=rule.role,
            repository=repository,
        )
        return {
            "access_token": token,
            "issued_token_type": ISSUED_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        }

    async def _verify(self, token: str) -> tuple[dict[str, Any], IssuerConfig]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("subject_token is not a JWT", {"oauth_error": "invalid_grant"}) from exc
        issuer = self.issuers.get(str(unverified.get("iss") or "").rstrip("/"))
        if issuer is None:
            raise AuthenticationFailed(
                "subject_token was issued by an issuer this platform does not trust",
                {"issuer": str(unverified.get("iss"))[:200], "oauth_error": "invalid_grant"},
            )
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationFailed(
                f"subject_token algorithm {alg!r} is not accepted", {"allowed": list(ALLOWED_ALGORITHMS)}
            )
        kid = header.get("kid")
        if not kid:
            raise AuthenticationFailed("subject_token has no key id", {"oauth_error": "invalid_grant"})
        key = await self._keys[issuer.issuer.rstrip("/")].key(str(kid))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("subject_token has expired", {"oauth_error": "invalid_grant"}) from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationFailed(
                f"subject_token is not meant for this platform (audience must be {issuer.audience!r})",
                {"audience": issuer.audience, "oauth_error": "invalid_grant"},
            ) from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"invalid subject_token: {exc}", {"oauth_error": "invalid_grant"}) from exc
        return claims, issuer

    def _issue(self, claims: Mapping[str, Any], issuer: IssuerConfig, role: str, repository: str) -> str:
        now = int(time.time())
        payload = {
            "iss": self.workload_issuer,
            "sub": str(claims["sub"]),
            "aud": self.audience,
            "azp": "forge-token-exchange",
            "typ": ACCESS_TOKEN_TYPE,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": str(uuid.uuid4()),
            "realm_access": {"roles": [role]},
            REPOSITORY_CLAIM: repository,
            # Who vouched for the workload, for audit trails (RFC 8693 "act" is for delegation).
            "forge_subject_issuer": issuer.issuer,
        }
        return jwt.encode(payload, self.key.private_key, algorithm=self.key.algorithm, headers={"kid": self.key.kid})


def _form(content_type: str, body: bytes) -> dict[str, str]:
    if len(body) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_REQUEST_BYTES} bytes", {"limit": MAX_REQUEST_BYTES})
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest(
            "the request must be form-encoded (application/x-www-form-urlencoded)", {"oauth_error": "invalid_request"}
        )
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the form could not be parsed", {"oauth_error": "invalid_request"}) from exc
    repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
    if repeated:
        raise InvalidRequest(
            "a parameter appears more than once", {"fields": repeated, "oauth_error": "invalid_request"}
        )
    return {k: v[0] for k, v in parsed.items()}


def _matches(value: Any, pattern: str) -> bool:
    if isinstance(value, list):
        return any(_matches(v, pattern) for v in value)
    if isinstance(value, bool) or value is None:
        return False
    return fnmatch.fnmatchcase(str(value), pattern)


def _first_matching(issuer: IssuerConfig, claims: Mapping[str, Any]) -> Rule:
    for rule in issuer.rules:
        if all(name in claims and _matches(claims[name], pattern) for name, pattern in rule.claims.items()):
            return rule
    raise AuthorizationFailed(
        "no rule of this issuer grants a role to this token",
        {"issuer": issuer.issuer, "sub": str(claims.get("sub"))[:200], "oauth_error": "invalid_grant"},
    )
