"""A local Keycloak-compatible token issuer for realm ``forge``.

Serves Keycloak's paths of the realm: the discovery document, the JWKS, the authorization
endpoint (authorization code with PKCE S256, behind a plain dev login form: a user name and
roles, no password), the token endpoint (``authorization_code``, ``refresh_token`` with rotation,
``client_credentials`` for service accounts) and token revocation. Clients, redirect URIs, roles
and lifetimes come from ``deploy/keycloak/forge-realm.json`` (see :mod:`forge_dev.realm`).
Users also get tokens from ``forge dev token``, signed with the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.config.cors import CORSConfig
from litestar.datastructures import FormMultiDict
from litestar.response import Redirect

from .keys import IssuerKeys, default_data_dir
from .realm import Client, Realm, load_realm

__all__ = ["Sessions", "create_issuer_app", "main"]

_AUTH_CODE_TTL = 60
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_USERNAME = re.compile(r"[^\s<>\"']{1,255}")


def _oauth_error(status: int, error: str, description: str) -> Response[dict[str, str]]:
    return Response({"error": error, "error_description": description}, status_code=status)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    subject: str
    roles: list[str]
    nonce: str | None
    expires_at: float


class Sessions:
    """Login sessions behind refresh tokens, on disk so a restarted issuer keeps them.

    A refresh token is ``<session id>.<secret>``; only the secret's hash of the newest token is
    kept. Using a token rotates it; presenting an already rotated one ends the session
    (Keycloak's ``revokeRefreshToken`` with ``refreshTokenMaxReuse`` 0): it was copied.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}

    def start(self, client_id: str, subject: str, roles: list[str], lifespan: int) -> tuple[str, dict[str, Any]]:
        sid = secrets.token_hex(16)
        self._data[sid] = {
            "client_id": client_id,
            "subject": subject,
            "roles": roles,
            "expires_at": int(time.time()) + lifespan,
        }
        return self._rotate(sid)

    def refresh(self, token: str, client_id: str) -> tuple[str, dict[str, Any]] | str:
        """A new token for the session, or why not."""
        sid, _, secret = token.partition(".")
        session = self._data.get(sid)
        if session is None or session["expires_at"] <= time.time():
            return "refresh token is expired or unknown"
        if session["client_id"] != client_id:
            return "refresh token was issued to another client"
        if not hmac.compare_digest(session["current"], _digest(secret)):
            self.revoke(token)
            return "refresh token was already used: the session is ended"
        return self._rotate(sid)

    def revoke(self, token: str) -> None:
        if self._data.pop(token.partition(".")[0], None) is not None:
            self._save()

    def _rotate(self, sid: str) -> tuple[str, dict[str, Any]]:
        secret = secrets.token_urlsafe(32)
        session = self._data[sid]
        session["current"] = _digest(secret)
        self._save()
        return f"{sid}.{secret}", session

    def _save(self) -> None:
        now = time.time()
        self._data = {sid: s for sid, s in self._data.items() if s["expires_at"] > now}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data))
        tmp.chmod(0o600)
        tmp.replace(self.path)


def _login_form(realm: Realm, params: dict[str, str], error: str = "") -> Response[str]:
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in params.items()
    )
    roles = "".join(
        f'<label><input type="checkbox" name="role" value="{html.escape(r)}"{" checked" if r == "viewer" else ""}>'
        f" {html.escape(r)}</label><br>"
        for r in realm.user_roles
    )
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>Forge dev login</title></head><body>"
        f"<h1>Sign in to Forge (dev issuer, realm {html.escape(realm.name)})</h1>{message}"
        f"<p>Client: {html.escape(params.get('client_id', ''))}. No password: this issuer is for development.</p>"
        f'<form method="post">{hidden}<label>User name <input name="username" required autofocus></label><br>'
        f'<fieldset><legend>Roles</legend>{roles}</fieldset><button type="submit">Sign in</button></form>'
        "</body></html>"
    )
    return Response(page, media_type="text/html", status_code=400 if error else 200)


_AUTH_PARAMS = ("client_id", "redirect_uri", "response_type", "state", "scope", "nonce", "code_challenge")


def _check_authorization(realm: Realm, params: dict[str, str]) -> tuple[Client | None, str, str]:
    """(client, error code, description); a client of None means: do not redirect, answer 400."""
    client = realm.clients.get(params.get("client_id", ""))
    if client is None or not client.authorization_code:
        return None, "unauthorized_client", "unknown client or client without the authorization code flow"
    if not client.accepts_redirect(params.get("redirect_uri", "")):
        return None, "invalid_request", "redirect_uri is not registered for this client"
    if params.get("response_type") != "code":
        return client, "unsupported_response_type", "only response_type=code is supported"
    if params.get("code_challenge_method") != "S256" or not re.fullmatch(
        r"[A-Za-z0-9\-_]{43}", params.get("code_challenge", "")
    ):
        return client, "invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256"
    return client, "", ""


def _error_redirect(params: dict[str, str], error: str, description: str) -> Redirect:
    query = {"error": error, "error_description": description}
    if params.get("state"):
        query["state"] = params["state"]
    sep = "&" if "?" in params["redirect_uri"] else "?"
    return Redirect(params["redirect_uri"] + sep + urlencode(query), status_code=302)


def _form_params(form: FormMultiDict) -> dict[str, str]:
    return {k: str(form.get(k)) for k in (*_AUTH_PARAMS, "code_challenge_method") if form.get(k) is not None}


class _Issuer:
    """The endpoints' state: keys, realm, pending authorization codes and sessions."""

    def __init__(self, keys: IssuerKeys, realm: Realm, sessions: Sessions) -> None:
        self.keys = keys
        self.realm = realm
        self.sessions = sessions
        self.codes: dict[str, _Grant] = {}

    def authorize(self, params: dict[str, str], username: str, roles: list[str]) -> Response[Any]:
        client, error, description = _check_authorization(self.realm, params)
        if client is None:
            return Response(f"{error}: {description}", media_type="text/plain", status_code=400)
        if error:
            return _error_redirect(params, error, description)
        if not _USERNAME.fullmatch(username):
            return _login_form(self.realm, params, "a user name is 1 to 255 characters without spaces or quotes")
        unknown = sorted(set(roles) - set(self.realm.user_roles))
        if unknown:
            return _login_form(self.realm, params, f"unknown roles: {', '.join(unknown)}")
        now = time.time()
        self.codes = {c: g for c, g in self.codes.items() if g.expires_at > now}
        code = secrets.token_urlsafe(32)
        self.codes[code] = _Grant(
            client.client_id,
            params["redirect_uri"],
            params["code_challenge"],
            username,
            roles,
            params.get("nonce"),
            now + _AUTH_CODE_TTL,
        )
        query = {"code": code, "iss": self.keys.issuer, **({"state": params["state"]} if "state" in params else {})}
        sep = "&" if "?" in params["redirect_uri"] else "?"
        return Redirect(params["redirect_uri"] + sep + urlencode(query), status_code=302)

    def token(self, form: FormMultiDict, authorization: str) -> Response[dict[str, Any]]:
        client_id, secret = str(form.get("client_id") or ""), form.get("client_secret")
        if authorization.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            except ValueError:
                return _oauth_error(401, "invalid_client", "malformed basic credentials")
        client = self.realm.clients.get(client_id)
        if client is None or (
            not client.public and (client.secret is None or not hmac.compare_digest(client.secret, str(secret or "")))
        ):
            return _oauth_error(401, "invalid_client", "invalid client credentials")
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self._client_credentials(client)
        if grant == "authorization_code":
            return self._authorization_code(client, form)
        if grant == "refresh_token":
            result = self.sessions.refresh(str(form.get("refresh_token") or ""), client.client_id)
            if isinstance(result, str):
                return _oauth_error(400, "invalid_grant", result)
            return Response(self._user_tokens(client, *result))
        return _oauth_error(
            400, "unsupported_grant_type", "grant_type is authorization_code, refresh_token or client_credentials"
        )

    def _client_credentials(self, client: Client) -> Response[dict[str, Any]]:
        if client.service_account_roles is None:
            return _oauth_error(400, "unauthorized_client", "this client has no service account")
        expires_in = self.realm.access_token_lifespan
        access = self.keys.sign(
            client.client_id,
            list(client.service_account_roles),
            service_account=True,
            client_id=client.client_id,
            expires_in=expires_in,
            audience=[*client.audiences, "account"],
        )
        return Response(
            {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "profile email"}
        )

    def _authorization_code(self, client: Client, form: FormMultiDict) -> Response[dict[str, Any]]:
        grant = self.codes.pop(str(form.get("code") or ""), None)  # one use, even when it fails below
        if grant is None or grant.expires_at <= time.time() or grant.client_id != client.client_id:
            return _oauth_error(400, "invalid_grant", "authorization code is invalid, used or expired")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error(400, "invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = str(form.get("code_verifier") or "")
        if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(_s256(verifier), grant.code_challenge):
            return _oauth_error(400, "invalid_grant", "code_verifier does not match the code_challenge")
        refresh, session = self.sessions.start(
            client.client_id, grant.subject, grant.roles, self.realm.session_lifespan
        )
        body = self._user_tokens(client, refresh, session)
        # OpenID Connect: the browser console's sign-in library expects an ID token for scope openid
        body["id_token"] = self.keys.sign(
            grant.subject,
            grant.roles,
            client_id=client.client_id,
            expires_in=self.realm.access_token_lifespan,
            audience=[client.client_id],
            extra={"typ": "ID", "auth_time": int(time.time()), **({"nonce": grant.nonce} if grant.nonce else {})},
        )
        return Response(body)

    def _user_tokens(self, client: Client, refresh: str, session: dict[str, Any]) -> dict[str, Any]:
        expires_in = self.realm.access_token_lifespan
        access = self.keys.sign(
            session["subject"],
            list(session["roles"]),
            client_id=client.client_id,
            expires_in=expires_in,
            audience=[*client.audiences, "account"],
            extra={"sid": refresh.partition(".")[0]},
        )
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "refresh_expires_in": max(0, int(session["expires_at"] - time.time())),
            "scope": "openid profile email",
        }


def _discovery_document(iss: str) -> dict[str, Any]:
    """The issuer's OpenID configuration (what Keycloak publishes for a realm, the parts Forge uses)."""
    oidc = f"{iss}/protocol/openid-connect"
    return {
        "issuer": iss,
        "authorization_endpoint": f"{oidc}/auth",
        "token_endpoint": f"{oidc}/token",
        "jwks_uri": f"{oidc}/certs",
        "revocation_endpoint": f"{oidc}/revoke",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "authorization_response_iss_parameter_supported": True,
    }


def create_issuer_app(keys: IssuerKeys, realm: Realm | None = None, sessions: Sessions | None = None) -> Litestar:
    state = _Issuer(keys, realm or load_realm(), sessions or Sessions(keys.path.parent / "sessions.json"))
    base = f"/realms/{state.realm.name}"

    @get(f"{base}/.well-known/openid-configuration", sync_to_thread=False)
    def discovery() -> dict[str, Any]:
        return _discovery_document(keys.issuer)

    @get(f"{base}/protocol/openid-connect/certs", sync_to_thread=False)
    def certs() -> dict[str, Any]:
        return keys.jwks()

    @get(f"{base}/protocol/openid-connect/auth", sync_to_thread=False)
    def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
        params = {k: str(v) for k, v in request.query_params.items() if k in (*_AUTH_PARAMS, "code_challenge_method")}
        client, error, description = _check_authorization(state.realm, params)
        if client is None:
            return Response(f"{error}: {description}", media_type="text/plain", status_code=400)
        if error:
            return _error_redirect(params, error, description)
        return _login_form(state.realm, params)

    @post(f"{base}/protocol/openid-connect/auth", status_code=302)
    async def login(request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        roles = [str(r) for r in form.getall("role", [])]
        return state.authorize(_form_params(form), str(form.get("username") or "").strip(), roles)

    @post(f"{base}/protocol/openid-connect/token", status_code=200)
    async def token(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        return state.token(await request.form(), request.headers.get("authorization", ""))

    @post(f"{base}/protocol/openid-connect/revoke", status_code=200)
    async def revoke(request: Request[Any, Any, Any]) -> Response[None]:
        # RFC 7009: unknown tokens are not an error; access tokens simply expire
        state.sessions.revoke(str((await request.form()).get("token") or ""))
        return Response(None, status_code=200)

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    origins = sorted({o for c in state.realm.clients.values() for o in c.web_origins})
    return Litestar(
        [discovery, certs, login_page, login, token, revoke, healthz],
        cors_config=CORSConfig(allow_origins=origins, allow_methods=["GET", "POST"]) if origins else None,
        debug=False,
        logging_config=None,
    )


def main() -> None:
    port = int(os.environ.get("FORGE_ISSUER_PORT", "8180"))
    issuer = os.environ.get("FORGE_OIDC_ISSUER", f"http://127.0.0.1:{port}/realms/forge")
    data_dir = Path(os.environ.get("FORGE_DATA_DIR") or default_data_dir())
    keys = IssuerKeys.load_or_create(data_dir / "issuer" / "keys.json", issuer)
    # FORGE_ISSUER_HOST=0.0.0.0 lets other containers reach it (docker-compose.yml); loopback otherwise.
    host = os.environ.get("FORGE_ISSUER_HOST", "127.0.0.1")
    uvicorn.run(create_issuer_app(keys), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
