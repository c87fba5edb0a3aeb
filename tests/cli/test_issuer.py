"""The dev issuer serves the Keycloak realm file, and speaks OAuth as Keycloak does.

The realm file is read here as Keycloak reads it (plain JSON), the issuer is asked over HTTP:
clients, redirect URIs, roles, audiences and lifetimes must agree. Nothing is changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from forge_dev.testing import Platform

REALM_FILE = Path(__file__).resolve().parents[2] / "deploy" / "keycloak" / "forge-realm.json"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REALM_FILE.read_text())
    return data


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _concrete(pattern: str) -> str:
    """A redirect URI a client would use under a registered pattern (loopback: any port)."""
    uri = pattern.replace("*", "callback")
    parts = urlsplit(uri)
    if parts.hostname in ("127.0.0.1", "::1") and parts.port is None:
        host = "[::1]" if parts.hostname == "::1" else parts.hostname
        uri = parts._replace(netloc=f"{host}:49152").geturl()
    return uri


class Browser:
    def __init__(self, platform: Platform) -> None:
        self.issuer = platform.issuer_url
        self.http = httpx.Client(timeout=10)

    def auth_params(self, client_id: str, redirect_uri: str, challenge: str, **extra: str) -> dict[str, str]:
        return {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": "s-1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }

    def login_page(self, params: dict[str, str]) -> httpx.Response:
        return self.http.get(f"{self.issuer}/protocol/openid-connect/auth", params=params)

    def sign_in(self, params: dict[str, str], username: str, roles: list[str]) -> httpx.Response:
        form = [*params.items(), ("username", username), *(("role", r) for r in roles)]
        return self.http.post(f"{self.issuer}/protocol/openid-connect/auth", content=urlencode(form), headers=FORM)

    def code(self, client_id: str, redirect_uri: str, challenge: str, username: str = "ann@acme.io") -> str:
        answer = self.sign_in(self.auth_params(client_id, redirect_uri, challenge), username, ["developer"])
        assert answer.status_code == 302, answer.text
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        assert query["state"] == ["s-1"]
        return query["code"][0]

    def token(self, form: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
        return self.http.post(
            f"{self.issuer}/protocol/openid-connect/token", content=urlencode(form), headers=FORM, auth=auth
        )


@pytest.fixture
def browser(platform: Platform) -> Iterator[Browser]:
    b = Browser(platform)
    with b.http:
        yield b


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_discovery_names_keycloaks_endpoints(browser: Browser, realm: dict[str, Any]) -> None:
    doc = browser.http.get(f"{browser.issuer}/.well-known/openid-configuration").json()
    assert doc["issuer"] == browser.issuer
    assert browser.issuer.endswith(f"/realms/{realm['realm']}")
    for key, path in (
        ("authorization_endpoint", "auth"),
        ("token_endpoint", "token"),
        ("jwks_uri", "certs"),
    ):
        assert doc[key] == f"{browser.issuer}/protocol/openid-connect/{path}"
    assert doc["code_challenge_methods_supported"] == ["S256"]


def test_the_login_form_offers_the_realms_user_roles(browser: Browser, realm: dict[str, Any]) -> None:
    machine_roles = {r for u in realm["users"] if u.get("serviceAccountClientId") for r in u["realmRoles"]}
    realm_roles = [r["name"] for r in realm["roles"]["realm"]]
    _, challenge = _pkce()
    for client in realm["clients"]:
        if not client.get("standardFlowEnabled"):
            continue
        page = browser.login_page(
            browser.auth_params(client["clientId"], _concrete(client["redirectUris"][0]), challenge)
        )
        assert page.status_code == 200, page.text
        offered = re.findall(r'name="role" value="([^"]+)"', page.text)
        assert offered == [r for r in realm_roles if r not in machine_roles]
    assert "worker" in machine_roles


def test_redirect_uris_are_the_realms(browser: Browser, realm: dict[str, Any]) -> None:
    _, challenge = _pkce()
    for client in realm["clients"]:
        cid = client["clientId"]
        if not client.get("standardFlowEnabled"):
            page = browser.login_page(browser.auth_params(cid, "http://127.0.0.1:5000/callback", challenge))
            assert page.status_code == 400, cid
            continue
        assert client["publicClient"] is True
        assert client["attributes"]["pkce.code.challenge.method"] == "S256"
        for pattern in client["redirectUris"]:
            page = browser.login_page(browser.auth_params(cid, _concrete(pattern), challenge))
            assert page.status_code == 200, (cid, pattern, page.text)
        for foreign in ("http://evil.example/callback", "http://127.0.0.1.evil.example/cb", "https://127.0.0.1/cb#x"):
            page = browser.login_page(browser.auth_params(cid, foreign, challenge))
            # never redirected to an unregistered URI: the issuer answers itself
            assert page.status_code == 400, (cid, foreign)
            assert "location" not in page.headers
    unknown = browser.login_page(browser.auth_params("nobody", "http://127.0.0.1:5000/cb", challenge))
    assert unknown.status_code == 400


def test_service_accounts_get_the_realms_roles_and_audience(
    browser: Browser, realm: dict[str, Any], platform: Platform
) -> None:
    accounts = {u["serviceAccountClientId"]: u["realmRoles"] for u in realm["users"] if u.get("serviceAccountClientId")}
    for client in realm["clients"]:
        cid = client["clientId"]
        auth = (cid, client["secret"]) if not client.get("publicClient") else None
        answer = browser.token({"grant_type": "client_credentials", **({} if auth else {"client_id": cid})}, auth)
        if not client.get("serviceAccountsEnabled"):
            assert answer.status_code == 400, (cid, answer.text)
            assert answer.json()["error"] == "unauthorized_client"
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["expires_in"] == realm["accessTokenLifespan"]
        claims = _claims(body["access_token"])
        assert claims["realm_access"]["roles"] == accounts[cid]
        audiences = [
            m["config"]["included.custom.audience"]
            for m in client["protocolMappers"]
            if m["protocolMapper"] == "oidc-audience-mapper"
        ]
        assert set(audiences) <= set(claims["aud"])
        assert claims["azp"] == cid
        wrong = browser.token({"grant_type": "client_credentials"}, (cid, "not-the-secret"))
        assert wrong.status_code == 401
    # the audience the services check is the one the mapper adds
    assert "forge" in {m["config"]["included.custom.audience"] for c in realm["clients"] for m in c["protocolMappers"]}


def test_code_flow_tokens_carry_the_realms_lifetimes_and_are_accepted(
    browser: Browser, realm: dict[str, Any], platform: Platform
) -> None:
    verifier, challenge = _pkce()
    redirect = "http://127.0.0.1:50123/callback"
    params = browser.auth_params("forge-cli", redirect, challenge, nonce="n-42", scope="openid")
    signed_in = browser.sign_in(params, "ann@acme.io", ["developer"])
    assert signed_in.status_code == 302, signed_in.text
    code = parse_qs(urlsplit(signed_in.headers["location"]).query)["code"][0]
    answer = browser.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": "forge-cli",
            "code_verifier": verifier,
        }
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["expires_in"] == realm["accessTokenLifespan"] == 3600
    assert realm["ssoSessionMaxLifespan"] - 5 <= body["refresh_expires_in"] <= realm["ssoSessionMaxLifespan"] == 2592000
    id_token = _claims(body["id_token"])  # OpenID Connect, for the console's sign-in library
    assert id_token["aud"] == ["forge-cli"]
    assert id_token["nonce"] == "n-42"
    assert id_token["iss"] == browser.issuer
    assert id_token["sub"] == "ann@acme.io"
    claims = _claims(body["access_token"])
    assert claims["preferred_username"] == "ann@acme.io"
    assert claims["realm_access"]["roles"] == ["developer"]
    assert claims["azp"] == "forge-cli"
    listed = httpx.get(
        f"{platform.gateway_url}/v1/runs",
        params={"repository": "issuer/accepted"},
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert listed.status_code == 200, listed.text


def test_pkce_is_enforced(browser: Browser) -> None:
    verifier, challenge = _pkce()
    redirect = "http://127.0.0.1:50124/callback"
    # no challenge, or the plain method: an error redirect to the (registered) client, no code
    for extra in ({"code_challenge": ""}, {"code_challenge_method": "plain"}):
        params = browser.auth_params("forge-cli", redirect, challenge, **extra)
        page = browser.login_page(params)
        assert page.status_code == 302
        query = parse_qs(urlsplit(page.headers["location"]).query)
        assert query["error"] == ["invalid_request"]
        assert "code" not in query
        signed = browser.sign_in(params, "ann@acme.io", ["viewer"])
        assert signed.status_code == 302
        assert "code" not in parse_qs(urlsplit(signed.headers["location"]).query)

    base = {"grant_type": "authorization_code", "redirect_uri": redirect, "client_id": "forge-cli"}
    code = browser.code("forge-cli", redirect, challenge)
    wrong = browser.token({**base, "code": code, "code_verifier": _pkce()[0]})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    # the code was spent by the failed attempt
    again = browser.token({**base, "code": code, "code_verifier": verifier})
    assert again.json()["error"] == "invalid_grant"

    code = browser.code("forge-cli", redirect, challenge)
    other_uri = browser.token({**base, "code": code, "code_verifier": verifier, "redirect_uri": redirect + "x"})
    assert other_uri.json()["error"] == "invalid_grant"

    code = browser.code("forge-cli", redirect, challenge)
    ok = browser.token({**base, "code": code, "code_verifier": verifier})
    assert ok.status_code == 200, ok.text
    replay = browser.token({**base, "code": code, "code_verifier": verifier})
    assert replay.status_code == 400


def test_login_form_refuses_unknown_roles_and_bad_names(browser: Browser) -> None:
    _, challenge = _pkce()
    params = browser.auth_params("forge-cli", "http://127.0.0.1:50125/callback", challenge)
    for username, roles in (("ann@acme.io", ["root"]), ("ann@acme.io", ["worker"]), ("", ["viewer"]), ("a b", [])):
        answer = browser.sign_in(params, username, roles)
        assert answer.status_code == 400, (username, roles)
        assert "location" not in answer.headers


def test_refresh_tokens_rotate_and_a_reused_one_ends_the_session(browser: Browser) -> None:
    verifier, challenge = _pkce()
    redirect = "http://127.0.0.1:50126/callback"
    code = browser.code("forge-cli", redirect, challenge)
    first = browser.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": "forge-cli",
            "code_verifier": verifier,
        }
    ).json()
    refresh = {"grant_type": "refresh_token", "client_id": "forge-cli"}
    second = browser.token({**refresh, "refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second_body = second.json()
    assert second_body["refresh_token"] != first["refresh_token"]
    assert _claims(second_body["access_token"])["preferred_username"] == "ann@acme.io"

    reused = browser.token({**refresh, "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    # the theft is assumed: the newest token of that session is dead too
    after = browser.token({**refresh, "refresh_token": second_body["refresh_token"]})
    assert after.json()["error"] == "invalid_grant"

    foreign = browser.token(
        {"grant_type": "refresh_token", "refresh_token": "x.y"}, ("forge-worker", "forge-worker-secret")
    )
    assert foreign.json()["error"] == "invalid_grant"


def test_revocation_ends_a_session(browser: Browser) -> None:
    verifier, challenge = _pkce()
    redirect = "http://127.0.0.1:50127/callback"
    code = browser.code("forge-cli", redirect, challenge)
    tokens = browser.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": "forge-cli",
            "code_verifier": verifier,
        }
    ).json()
    revoked = browser.http.post(
        f"{browser.issuer}/protocol/openid-connect/revoke",
        content=urlencode({"token": tokens["refresh_token"], "client_id": "forge-cli"}),
        headers=FORM,
    )
    assert revoked.status_code == 200
    refused = browser.token(
        {"grant_type": "refresh_token", "client_id": "forge-cli", "refresh_token": tokens["refresh_token"]}
    )
    assert refused.json()["error"] == "invalid_grant"


def test_browser_apps_may_call_the_token_endpoint_from_the_realms_web_origins(
    browser: Browser, realm: dict[str, Any]
) -> None:
    allowed = set()
    for client in realm["clients"]:
        if "+" in client.get("webOrigins", []):
            for uri in client["redirectUris"]:
                parts = urlsplit(uri.rstrip("*"))
                if parts.port is not None:
                    allowed.add(f"{parts.scheme}://{parts.netloc}")
    assert "http://127.0.0.1:8080" in allowed  # the console
    token_url = f"{browser.issuer}/protocol/openid-connect/token"
    for origin in allowed:
        preflight = browser.http.options(token_url, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code in (200, 204), preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "http://127.0.0.1"):
        answer = browser.http.post(token_url, headers={"Origin": origin, **FORM}, content="grant_type=x")
        assert "access-control-allow-origin" not in answer.headers, origin
