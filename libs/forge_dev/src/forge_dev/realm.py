"""The realm definition the dev issuer serves, read from the Keycloak realm export.

``deploy/keycloak/forge-realm.json`` is imported into a real Keycloak (docker-compose, a
production install) and read here, so the clients, redirect URIs, roles and token lifetimes of
the dev issuer cannot drift from Keycloak's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Client", "Realm", "default_realm_path", "load_realm"]

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})


def default_realm_path() -> Path:
    env = os.environ.get("FORGE_REALM_FILE")
    if env:
        return Path(env)
    # libs/forge_dev/src/forge_dev/realm.py -> repository root
    return Path(__file__).resolve().parents[4] / "deploy" / "keycloak" / "forge-realm.json"


@dataclass(frozen=True)
class Client:
    client_id: str
    public: bool
    secret: str | None
    redirect_uris: tuple[str, ...]
    authorization_code: bool
    # realm roles of the client's service account; None: the client has no service account
    service_account_roles: tuple[str, ...] | None
    pkce_method: str | None
    audiences: tuple[str, ...]
    web_origins: tuple[str, ...]

    def accepts_redirect(self, uri: str) -> bool:
        """Keycloak's matching: a trailing ``*`` is a prefix wildcard, and on a loopback host
        any port matches (RFC 8252 section 7.3: a CLI listens on whatever port is free)."""
        try:
            target = urlsplit(uri)
        except ValueError:
            return False
        if target.fragment or target.scheme not in ("http", "https") or not target.hostname:
            return False
        return any(_redirect_matches(pattern, uri) for pattern in self.redirect_uris)


def _redirect_matches(pattern: str, uri: str) -> bool:
    wildcard = pattern.endswith("*")
    base = pattern[:-1] if wildcard else pattern
    host = urlsplit(base).hostname
    if host in _LOOPBACK_HOSTS and urlsplit(uri).hostname == host:
        base, uri = _without_port(base), _without_port(uri)
    return uri.startswith(base) if wildcard else uri == base


def _without_port(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class Realm:
    name: str
    roles: tuple[str, ...]
    # roles a person may hold: every realm role that is not only given to service accounts
    user_roles: tuple[str, ...]
    clients: dict[str, Client]
    access_token_lifespan: int
    session_lifespan: int


def load_realm(path: Path | None = None) -> Realm:
    path = path or default_realm_path()
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"realm file {path} not found (set FORGE_REALM_FILE)") from None
    roles = tuple(role["name"] for role in data.get("roles", {}).get("realm", []))
    account_roles: dict[str, tuple[str, ...]] = {}
    for user in data.get("users", []):
        if user.get("serviceAccountClientId"):
            account_roles[user["serviceAccountClientId"]] = tuple(user.get("realmRoles", []))
    machine_only = set().union(*account_roles.values()) if account_roles else set()
    clients = {c["clientId"]: _client(c, account_roles) for c in data.get("clients", []) if c.get("enabled", True)}
    return Realm(
        name=data["realm"],
        roles=roles,
        user_roles=tuple(r for r in roles if r not in machine_only),
        clients=clients,
        access_token_lifespan=int(data.get("accessTokenLifespan", 300)),
        session_lifespan=int(data.get("ssoSessionMaxLifespan", 36000)),
    )


def _client(data: dict[str, Any], account_roles: dict[str, tuple[str, ...]]) -> Client:
    client_id = data["clientId"]
    public = bool(data.get("publicClient", False))
    secret = None if public else data.get("secret")
    if client_id == "forge-worker":
        # the worker's secret is a deployment secret; the realm file's value is the dev default
        secret = os.environ.get("FORGE_WORKER_CLIENT_SECRET", secret)
    audiences = tuple(
        m["config"]["included.custom.audience"]
        for m in data.get("protocolMappers", [])
        if m.get("protocolMapper") == "oidc-audience-mapper" and m.get("config", {}).get("access.token.claim") == "true"
    )
    return Client(
        client_id=client_id,
        public=public,
        secret=secret,
        redirect_uris=tuple(data.get("redirectUris", [])),
        authorization_code=bool(data.get("standardFlowEnabled", True)),
        service_account_roles=account_roles.get(client_id, ()) if data.get("serviceAccountsEnabled") else None,
        pkce_method=data.get("attributes", {}).get("pkce.code.challenge.method"),
        audiences=audiences,
        web_origins=_web_origins(data),
    )


def _web_origins(data: dict[str, Any]) -> tuple[str, ...]:
    """Origins a browser app of the client may call the token endpoint from (CORS). ``+`` is
    Keycloak's "the origins of the redirect URIs"; loopback URIs without a port (the CLI's) are
    no browser app's origin."""
    origins: list[str] = []
    for entry in data.get("webOrigins", []):
        if entry != "+":
            origins.append(entry.rstrip("/"))
            continue
        for uri in data.get("redirectUris", []):
            parts = urlsplit(uri.rstrip("*"))
            if parts.scheme and parts.port is not None:
                origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(dict.fromkeys(origins))
