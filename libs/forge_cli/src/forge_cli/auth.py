"""Login (OAuth 2.0 authorization code with PKCE on a loopback redirect), refresh, logout.

The flow is RFC 8252's for native apps: the CLI listens on ``127.0.0.1`` on a free port, opens
the issuer's authorization URL in a browser, and exchanges the code it receives with the
RFC 7636 S256 verifier only it knows. The gateway names its issuer at ``GET /v1/meta``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .config import Config, Context
from .http import ApiError, AuthError, CliError, TimeoutFailure, json_answer, request

__all__ = ["access_token", "login_with_browser", "login_with_token", "logout", "token_claims"]

DEFAULT_CLIENT_ID = "forge-cli"


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: only to show who is logged in and until when.
    The gateway verifies every token it is sent."""
    import jwt

    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims


def _apply_tokens(ctx: Context, answer: dict[str, Any]) -> None:
    now = time.time()
    ctx.access_token = str(answer["access_token"])
    ctx.expires_at = now + float(answer.get("expires_in") or 300)
    if answer.get("refresh_token"):
        ctx.refresh_token = str(answer["refresh_token"])
        expires = answer.get("refresh_expires_in")
        ctx.refresh_expires_at = now + float(expires) if expires else None
    claims = token_claims(ctx.access_token)
    ctx.user = claims.get("email") or claims.get("preferred_username") or claims.get("sub")
    ctx.roles = list((claims.get("realm_access") or {}).get("roles", []))


def _token_request(endpoint: str, form: dict[str, str], timeout: float) -> dict[str, Any]:
    status, content = request("POST", endpoint, form=form, timeout=timeout)
    try:
        answer: dict[str, Any] = json.loads(content)
    except ValueError:
        answer = {}
    if status >= 400 or "access_token" not in answer:
        why = answer.get("error_description") or answer.get("error") or content[:200].decode("utf-8", "replace")
        raise AuthError(f"the identity provider refused: {status} {why}")
    return answer


def access_token(config: Config, name: str, ctx: Context, timeout: float) -> str:
    """The context's access token, refreshed (and the new tokens saved) when it has expired."""
    if ctx.access_valid():
        return str(ctx.access_token)
    with config.locked():
        # another forge process may have refreshed while this one waited for the lock
        config = Config.load(config.path)
        ctx = config.contexts.get(name) or ctx
        if ctx.access_valid():
            return str(ctx.access_token)
        if not ctx.refreshable():
            raise AuthError(f"the session of context {name} has expired: run `forge login`")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": str(ctx.refresh_token),
            "client_id": str(ctx.client_id),
        }
        try:
            answer = _token_request(str(ctx.token_endpoint), form, timeout)
        except AuthError as exc:
            raise AuthError(f"{exc}; run `forge login` for context {name}") from None
        _apply_tokens(ctx, answer)
        config.save()  # at once: the old refresh token is spent
    return str(ctx.access_token)


def discover(api: str, issuer: str | None, timeout: float) -> tuple[str, dict[str, Any]]:
    """(issuer, its OpenID configuration); the issuer is the one the gateway names unless given."""
    if issuer is None:
        status, content = request("GET", api.rstrip("/") + "/v1/meta", timeout=timeout)
        meta = json_answer(status, content, api)
        issuer = meta.get("oidc_issuer") if isinstance(meta, dict) else None
        if not issuer:
            raise ApiError(f"{api}/v1/meta names no issuer: pass --issuer")
    issuer = issuer.rstrip("/")
    status, content = request("GET", f"{issuer}/.well-known/openid-configuration", timeout=timeout)
    document = json_answer(status, content, issuer)
    if not isinstance(document, dict) or "authorization_endpoint" not in document:
        raise ApiError(f"{issuer} has no OpenID configuration with an authorization endpoint")
    return issuer, document


class _Callback:
    """The one redirect the loopback server waits for."""

    def __init__(self) -> None:
        self.params: dict[str, str] | None = None
        self.done = threading.Event()


def _callback_server(callback: _Callback) -> HTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/callback":
                self.send_error(404)
                return
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            ok = "code" in params
            body = (
                "Signed in to Forge: you may close this window and return to the terminal."
                if ok
                else f"Sign-in failed: {params.get('error_description') or params.get('error') or 'no code'}"
            ).encode()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if callback.params is None:
                callback.params = params
                callback.done.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the terminal is the user's, not an access log

    return HTTPServer(("127.0.0.1", 0), Handler)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def login_with_browser(
    ctx: Context, *, issuer: str | None, client_id: str, open_browser: bool, wait: float, timeout: float
) -> None:
    """Runs the authorization code flow and stores the tokens in ``ctx``."""
    import sys

    issuer, document = discover(ctx.api, issuer, timeout)
    callback = _Callback()
    server = _callback_server(callback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
        verifier, challenge = _pkce()
        state = secrets.token_urlsafe(24)
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile email",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        url = f"{document['authorization_endpoint']}?{urlencode(query)}"
        print(f"Open this URL in a browser to sign in:\n{url}", file=sys.stderr, flush=True)
        if open_browser:
            webbrowser.open(url)
        if not callback.done.wait(wait):
            raise TimeoutFailure(f"no sign-in within {wait:g} s")
    finally:
        server.shutdown()
        server.server_close()
    params = callback.params or {}
    if params.get("state") != state:
        raise AuthError("the sign-in answer does not carry this login's state: try again")
    if "code" not in params:
        raise AuthError(f"sign-in failed: {params.get('error_description') or params.get('error')}")
    form = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    answer = _token_request(str(document["token_endpoint"]), form, timeout)
    ctx.forget_tokens()
    ctx.issuer, ctx.client_id = issuer, client_id
    ctx.token_endpoint = str(document["token_endpoint"])
    ctx.revocation_endpoint = document.get("revocation_endpoint")
    _apply_tokens(ctx, answer)


# The gateway answers who a token is from the token alone, after authenticating it as it does
# every request: 200 (with who) to a token it accepts, 401 to one it refuses. No service behind
# the gateway is asked, so a token can be checked while they are down.
_CHECK_PATH = "/v1/me"
_NOT_STORED = "nothing stored"


def login_with_token(ctx: Context, token: str, timeout: float) -> None:
    """Stores ``token`` in ``ctx`` once it is a token (a JWT) and the context's gateway accepts
    it; raises, leaving ``ctx`` as it was, otherwise."""
    if not token or any(c.isspace() for c in token):
        raise CliError("--with-token reads one token from standard input, and it was empty or not one token")
    if not _is_jwt(token):
        raise CliError(
            "standard input does not hold a token: an access token is a JWT (three base64url parts "
            f"separated by dots), as the identity provider or `forge dev token` gives it; {_NOT_STORED}"
        )
    caller = _check_with_gateway(ctx.api, token, timeout)
    ctx.forget_tokens()
    ctx.token_endpoint = ctx.revocation_endpoint = None
    ctx.access_token = token
    claims = token_claims(token)
    ctx.expires_at = float(claims["exp"]) if isinstance(claims.get("exp"), int | float) else None
    if caller is not None:  # what the gateway verified
        ctx.user = str(caller["identity"])
        ctx.roles = [str(role) for role in caller.get("roles") or []]
    else:
        ctx.user = claims.get("email") or claims.get("preferred_username") or claims.get("sub")
        ctx.roles = list((claims.get("realm_access") or {}).get("roles", []))


def _is_jwt(token: str) -> bool:
    import jwt

    try:
        jwt.get_unverified_header(token)
        jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return True


def _check_with_gateway(api: str, token: str, timeout: float) -> dict[str, Any] | None:
    """Raises unless the gateway at ``api`` authenticates ``token`` (see :data:`_CHECK_PATH`);
    the gateway's ``GET /v1/me`` answer, or None when it accepted the token without one."""
    try:
        status, content = request(
            "GET", api.rstrip("/") + _CHECK_PATH, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )
    except CliError as exc:  # unreachable, or no answer in time: same class, same exit status
        raise type(exc)(f"{exc}; the token could not be checked, {_NOT_STORED}") from None
    if status == 200:
        caller = _caller(content)
        if caller is not None:
            return caller
    elif status in (404, 429) and _is_envelope(content):
        # Authenticated all the same: a gateway older than /v1/me authenticates a request before
        # it finds no route for it (404), and only authenticated requests count against the rate
        # limit (429). Who the token is, its own claims say.
        return None
    answer = _one_line(status, content, api)
    if status == 401:
        raise AuthError(f"the gateway refused the token: {answer}; {_NOT_STORED}")
    if status >= 500:
        raise ApiError(f"the gateway could not check the token: {answer}; {_NOT_STORED}", status)
    raise ApiError(f"{api} did not answer as a Forge gateway: {answer}; {_NOT_STORED}", status)


def _caller(content: bytes) -> dict[str, Any] | None:
    """A ``GET /v1/me`` answer (not some other server's 200 page), or None."""
    try:
        caller = json.loads(content)
    except ValueError:
        return None
    if isinstance(caller, dict) and isinstance(caller.get("identity"), str) and isinstance(caller.get("roles"), list):
        return caller
    return None


def _is_envelope(content: bytes) -> bool:
    """Is this Forge's error envelope (not some other server's 404 page)?"""
    try:
        return isinstance(json.loads(content)["error"]["code"], str)
    except (ValueError, KeyError, TypeError):
        return False


def _one_line(status: int, content: bytes, api: str) -> str:
    """An answer as every command reports a refusal: ``<status> <code>: <message> {details}``."""
    try:
        json_answer(status, content, api)
    except ApiError as exc:
        return str(exc)
    return str(status)


def logout(ctx: Context, timeout: float) -> None:
    """Forgets the tokens; ends the issuer's session too when it offers revocation (best effort)."""
    if ctx.refresh_token and ctx.revocation_endpoint and ctx.client_id:
        form = {"token": ctx.refresh_token, "token_type_hint": "refresh_token", "client_id": ctx.client_id}
        # the local tokens go regardless: the refresh token expires on its own
        with contextlib.suppress(CliError):
            request("POST", ctx.revocation_endpoint, form=form, timeout=timeout)
    ctx.forget_tokens()
