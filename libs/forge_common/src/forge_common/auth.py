"""Keycloak access-token verification and the platform's role table.

Tokens are verified with pyjwt against the realm's JWKS: the signing key is looked up by
``kid`` in a cached key set that is refreshed when an unknown ``kid`` appears (key rotation),
at most once per :attr:`JwksCache.min_refresh_interval`. Only RS256 and ES256 are accepted.

Besides the realm, a service may trust the gateway's workload issuer (``FORGE_WORKLOAD_ISSUER``):
the short-lived tokens ``POST /v1/auth/token`` issues in exchange for a CI job's OIDC token. Such
a token carries a ``forge_repository`` claim; :func:`require_repository` refuses (403) any
operation of its holder on another repository. A realm token may carry the claim as well (a
Keycloak token exchange with a mapper adding it): it binds the same way.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import jwt
import msgspec

from .errors import AuthenticationFailed, AuthorizationFailed, InvalidRequest, unavailable

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ALLOWED_ALGORITHMS",
    "REPOSITORY_CLAIM",
    "USER_ROLES",
    "JwksCache",
    "KeySet",
    "LocalKeySet",
    "Permission",
    "Principal",
    "TokenVerifier",
    "permissions_for",
    "repository_filter",
    "require",
    "require_repository",
]

ALLOWED_ALGORITHMS = ("RS256", "ES256")
# Keycloak's ``typ`` claim of an access token; its ID tokens say "ID", refresh tokens "Refresh".
ACCESS_TOKEN_TYPE = "Bearer"  # noqa: S105 - a token type, not a secret
# The one repository a workload token may act on.
REPOSITORY_CLAIM = "forge_repository"


class Permission(enum.Enum):
    READ = "read"
    RUNS_WRITE = "runs:write"  # create and cancel runs
    RELEASES_CREATE = "releases:create"
    RELEASES_ALIAS = "releases:alias"
    DEPLOYMENTS_CREATE = "deployments:create"
    APPROVALS_WRITE = "approvals:write"  # create and revoke approvals
    INTERNAL_STATUS = "internal:status"  # worker status callbacks
    # Outgoing webhook subscriptions; developers only those scoped to a repository (the
    # pipeline service's notify package checks the scope).
    WEBHOOKS_MANAGE = "webhooks:manage"


_USER_ROLES: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "developer": frozenset(
        {
            Permission.READ,
            Permission.RUNS_WRITE,
            Permission.RELEASES_CREATE,
            Permission.RELEASES_ALIAS,
            Permission.DEPLOYMENTS_CREATE,
            Permission.WEBHOOKS_MANAGE,
        }
    ),
    "approver": frozenset({Permission.READ, Permission.APPROVALS_WRITE}),
}
_USER_ROLES["admin"] = frozenset().union(*_USER_ROLES.values())
USER_ROLES = frozenset(_USER_ROLES)
_WORKER = frozenset({Permission.READ, Permission.INTERNAL_STATUS, Permission.RELEASES_CREATE})


def permissions_for(roles: Iterable[str], service_account: bool) -> frozenset[Permission]:
    """Service accounts may only act as workers; users never get worker permissions."""
    roles = set(roles)
    if service_account:
        return _WORKER if "worker" in roles else frozenset()
    perms: frozenset[Permission] = frozenset()
    for role in roles:
        perms = perms | _USER_ROLES.get(role, frozenset())
    return perms


class Principal(msgspec.Struct, frozen=True):
    subject: str
    identity: str  # what the platform records as "who": email, else username, else sub
    roles: frozenset[str]
    service_account: bool
    permissions: frozenset[Permission]
    expires_at: float
    token: str
    # The verified token's claims, for services that match a configured claim (e.g. a GitHub id).
    claims: dict[str, Any] = msgspec.field(default_factory=dict)
    # Set for a workload token: the only repository (owner/name) it may act on.
    repository: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


def require_repository(principal: Principal, repository: str) -> None:
    """403 unless the principal may act on ``repository`` (names compare case-insensitively,
    as GitHub's do). Tokens without a repository claim act on every repository."""
    if principal.repository is not None and principal.repository.lower() != repository.lower():
        raise AuthorizationFailed(
            f"this token may only act on repository {principal.repository}",
            {"token_repository": principal.repository, "repository": repository},
        )


def repository_filter(principal: Principal, requested: str | None) -> str | None:
    """The repository a list may show: a repository-bound token sees its own repository only."""
    if principal.repository is None:
        return requested
    if requested is None:
        return principal.repository
    require_repository(principal, requested)
    return requested


def require(principal: Principal, permission: Permission) -> None:
    if not principal.can(permission):
        kind = "service-account" if principal.service_account else "user"
        raise AuthorizationFailed(
            f"this {kind} token may not perform this action",
            {"required_permission": permission.value, "roles": sorted(principal.roles)},
        )


class KeySet(Protocol):
    async def get(self, kid: str) -> jwt.PyJWK: ...


class LocalKeySet:
    """Keys known without fetching them (the gateway verifying tokens it signed itself)."""

    def __init__(self, keys: Mapping[str, jwt.PyJWK]) -> None:
        self._keys = dict(keys)

    async def get(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is None:
            raise AuthenticationFailed("token signed with an unknown key", {"kid": kid})
        return key


class JwksCache:
    min_refresh_interval = 5.0

    def __init__(self, jwks_url: str) -> None:
        self.jwks_url = jwks_url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._unreachable = False  # the last fetch failed: unknown kids are the IdP's outage, not the token's fault
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is None and time.monotonic() - self._fetched_at >= self.min_refresh_interval:
                await self._refresh()
                key = self._keys.get(kid)
        if key is None:
            if self._unreachable:
                raise unavailable("identity provider", "its key set could not be fetched")
            raise AuthenticationFailed("token signed with an unknown key", {"kid": kid})
        return key

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(self.jwks_url) as resp:
                    resp.raise_for_status()
                    data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Keys already cached keep working; only tokens needing a new key wait for the IdP.
            self._unreachable = True
            raise unavailable("identity provider", f"key set fetch failed: {type(exc).__name__}") from exc
        self._unreachable = False
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in data.get("keys", []):
            if jwk.get("use", "sig") != "sig" or "kid" not in jwk:
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue
        self._keys = keys


class TokenVerifier:
    """Verifies bearer tokens; remembers verified tokens until they expire.

    ``also_trusted`` maps more issuers (the gateway's workload issuer) to their key sets; a
    token's unverified ``iss`` only picks which key set its signature must verify against."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: KeySet,
        leeway: float = 10.0,
        also_trusted: Mapping[str, KeySet] | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.jwks = jwks
        self.leeway = leeway
        self._issuers: dict[str, KeySet] = {i.rstrip("/"): k for i, k in (also_trusted or {}).items()}
        self._issuers[self.issuer] = jwks
        self._verified: dict[str, Principal] = {}

    async def verify_headers(self, values: Sequence[str]) -> Principal:
        """Every ``Authorization`` header of the request: proxies and services disagree on which
        of several counts (first, last, joined), so a request carrying more than one is refused."""
        if len(values) > 1:
            raise InvalidRequest("more than one Authorization header", {"field": "Authorization", "count": len(values)})
        return await self.verify_header(values[0] if values else None)

    async def verify_header(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("authorization header must be 'Bearer <token>'")
        return await self.verify(token.strip())

    def _key_set(self, token: str) -> tuple[str, KeySet]:
        if len(self._issuers) == 1:
            return self.issuer, self.jwks
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("malformed token") from exc
        issuer = str(unverified.get("iss") or "").rstrip("/")
        keys = self._issuers.get(issuer)
        if keys is None:
            # Judged as a realm token, as without other issuers: the realm's checks say why not.
            return self.issuer, self.jwks
        return issuer, keys

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        now = time.time()
        if cached is not None and cached.expires_at + self.leeway > now:
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("malformed token") from exc
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationFailed(
                f"token algorithm {alg!r} is not accepted", {"allowed": list(ALLOWED_ALGORITHMS)}
            )
        kid = header.get("kid")
        if not kid:
            raise AuthenticationFailed("token has no key id")
        issuer, keys = self._key_set(token)
        key = await keys.get(kid)
        if key.algorithm_name != alg:
            raise AuthenticationFailed("token algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("token has expired") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthenticationFailed("token was issued by another issuer") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"invalid token: {exc}") from exc
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            # An ID or refresh token of the same realm is signed by the same key: only the type
            # says it was not issued to call APIs.
            raise AuthenticationFailed(
                "token is not an access token", {"typ": str(claims.get("typ"))[:40], "expected": ACCESS_TOKEN_TYPE}
            )
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud or [])
        if self.audience not in auds and claims.get("azp") != self.audience:
            raise AuthenticationFailed("token is not meant for this platform", {"audience": self.audience})
        principal = _principal(claims, token)
        if len(self._verified) > 10_000:
            self._verified = {t: p for t, p in self._verified.items() if p.expires_at > now}
            if len(self._verified) > 10_000:
                self._verified.clear()
        self._verified[token] = principal
        return principal


def _principal(claims: dict[str, Any], token: str) -> Principal:
    repository = claims.get(REPOSITORY_CLAIM)
    roles = frozenset(str(r) for r in (claims.get("realm_access") or {}).get("roles", []))
    username = str(claims.get("preferred_username") or "")
    service_account = username.startswith("service-account-") or bool(claims.get("client_id") or claims.get("clientId"))
    identity = str(claims.get("email") or username or claims["sub"])
    return Principal(
        subject=str(claims["sub"]),
        identity=identity,
        roles=roles,
        service_account=service_account,
        permissions=permissions_for(roles, service_account),
        expires_at=float(claims["exp"]),
        token=token,
        claims=claims,
        repository=str(repository) if repository is not None else None,
    )
