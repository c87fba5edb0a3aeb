""" "Log in" through an OpenID Connect issuer: authorization code with PKCE (S256), in the browser.

The issuer is a stand-in for Keycloak (a real local HTTP server speaking the standard endpoints:
discovery, authorization, token) that checks what a real one checks: the public client, the
redirect URI, the state round trip and the code verifier against the S256 challenge. The access
token it hands out is signed by the platform's issuer key, so the gateway accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from forge_dev.stack import free_port
from forge_dev.testing import Platform

from .test_console import _find, _shown, _wait

USER = "olivia.oidc@acme.io"
CLIENT_ID = "forge-console"


class FakeIssuer:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/realms/forge"
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (challenge, redirect_uri)
        self.authorize_queries: list[dict[str, str]] = []
        self.token_forms: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(
                self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
            ) -> None:
                raw = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                path = urlsplit(self.path)
                if path.path == "/realms/forge/.well-known/openid-configuration":
                    self._send(
                        200,
                        {
                            "issuer": issuer.url,
                            "authorization_endpoint": f"{issuer.url}/protocol/openid-connect/auth",
                            "token_endpoint": f"{issuer.url}/protocol/openid-connect/token",
                            "code_challenge_methods_supported": ["S256"],
                        },
                    )
                elif path.path == "/realms/forge/protocol/openid-connect/auth":
                    query = {k: v[0] for k, v in parse_qs(path.query).items()}
                    issuer.authorize_queries.append(query)
                    ok = (
                        query.get("response_type") == "code"
                        and query.get("client_id") == CLIENT_ID
                        and query.get("code_challenge_method") == "S256"
                        and query.get("redirect_uri", "").endswith("/login/callback")
                    )
                    if not ok:
                        self._send(400, {"error": "invalid_request"})
                        return
                    # The user logs in (a real issuer shows its form here) and is sent back.
                    code = secrets.token_urlsafe(16)
                    issuer.codes[code] = (query["code_challenge"], query["redirect_uri"])
                    target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
                    self._send(302, None, {"Location": target})
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                issuer.token_forms.append(form)
                challenge, redirect_uri = issuer.codes.pop(form.get("code", ""), ("", ""))
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if (
                    form.get("grant_type") != "authorization_code"
                    or form.get("client_id") != CLIENT_ID
                    or not challenge
                    or computed != challenge
                    or form.get("redirect_uri") != redirect_uri
                ):
                    self._send(400, {"error": "invalid_grant", "error_description": "code or verifier rejected"})
                    return
                token = issuer.platform.keys.sign(USER, ["developer"], client_id=CLIENT_ID)
                self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

        return Handler

    def __enter__(self) -> FakeIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer(platform: Platform) -> Iterator[FakeIssuer]:
    with FakeIssuer(platform) as fake:
        yield fake


def test_log_in_through_the_issuer_with_pkce(platform: Platform, issuer: FakeIssuer, browser: Any) -> None:
    gateway = platform.start_process("gateway", env={"FORGE_CONSOLE_OIDC_ISSUER": issuer.url})
    try:
        browser.get(f"{gateway.url}/environments")
        _wait(browser, _shown("#login-issuer")).click()
        _wait(browser, lambda d: urlsplit(d.current_url).path == "/environments", message="not back on the page")
        _wait(browser, _shown("#who .user", USER))
        # the code and state never stay in the address bar; the token is in sessionStorage only
        assert "code=" not in browser.current_url
        assert browser.execute_script("return sessionStorage.getItem('forge.token') !== null;")
        assert browser.execute_script("return localStorage.length;") == 0
        query = issuer.authorize_queries[-1]
        assert query["scope"] == "openid profile email"
        assert len(query["code_challenge"]) == 43
        assert issuer.token_forms[-1]["code_verifier"] not in json.dumps(query)
        _find(browser, "#who button").click()
        _wait(browser, _shown("#token-input"))
        assert browser.execute_script("return sessionStorage.getItem('forge.token');") is None
    finally:
        gateway.stop(timeout=5)
