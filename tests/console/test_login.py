""" "Log in" through the issuer, in the browser: authorization code with PKCE (S256) against the
platform's dev issuer (Keycloak's paths, its login form, the realm's public client ``forge-cli``),
then the console calls the API with the token it got."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from forge_dev.keys import IssuerKeys
from forge_dev.testing import Platform

from .conftest import start_browser
from .test_console import _find, _shown, _wait
from .test_token_sign_in import _READ_EVENTS

USER = "olivia.oidc@acme.io"
# Requests of this page to the issuer's token endpoint (the code exchange, each refresh).
_TOKEN_REQUESTS = (
    "return performance.getEntriesByType('resource')"
    ".filter((e) => e.name.endsWith('/protocol/openid-connect/token')).length;"
)


def test_log_in_through_the_dev_issuer_with_pkce(platform: Platform, tmp_path: Path) -> None:
    # The dev issuer answers CORS only for the realm's web origins (the console at :8080); this
    # test's gateway listens on a free port, so this browser does not enforce CORS. The CSP, the
    # redirect URI check, state and PKCE are all still in force.
    with start_browser(tmp_path / "profile", "--disable-web-security") as browser:
        _log_in(platform, browser)


def _log_in(platform: Platform, browser: Any) -> None:
    gateway = platform.gateway_url
    browser.get(f"{gateway}/environments?repository=acme/login-check&projects=api")
    _wait(browser, _shown("#login-issuer")).click()

    # the issuer's own page: user name and roles (the dev issuer has no passwords)
    _wait(browser, lambda d: d.current_url.startswith(platform.issuer_url), message="not sent to the issuer")
    query = dict(pair.split("=", 1) for pair in urlsplit(browser.current_url).query.split("&"))
    assert query["code_challenge_method"] == "S256"
    assert query["client_id"] == "forge-cli"
    assert len(query["code_challenge"]) == 43
    _wait(browser, _shown("input[name=username]")).send_keys(USER)
    _find(browser, "input[name=role][value=developer]").click()
    _find(browser, "form button[type=submit]").click()

    # back on the page asked for, logged in; the code is gone from the address bar
    _wait(browser, _shown("#who .user", USER), message="the console did not log in")
    assert urlsplit(browser.current_url).path == "/environments"
    assert "code=" not in browser.current_url
    assert browser.execute_script("return localStorage.length;") == 0
    token = browser.execute_script("return sessionStorage.getItem('forge.token');")
    assert token
    assert token not in browser.current_url
    # the API accepts it: the board asked the deployment service (nothing deployed there)
    _wait(browser, _shown("#board td[data-environment=production]"), message="the board did not load")
    assert "developer" in _find(browser, "#who .roles").text

    _find(browser, "#who button").click()
    _wait(browser, _shown("#token-input"))
    assert browser.execute_script("return sessionStorage.getItem('forge.token');") is None


def test_a_token_the_gateway_refuses_is_renewed_once_with_the_refresh_token(platform: Platform, tmp_path: Path) -> None:
    gateway = platform.gateway_url
    stranger = IssuerKeys.load_or_create(tmp_path / "stranger.json", platform.issuer_url)
    with start_browser(tmp_path / "profile", "--disable-web-security") as browser:
        browser.get(f"{gateway}/releases")
        _wait(browser, _shown("#login-issuer")).click()
        _wait(browser, _shown("input[name=username]")).send_keys(USER)
        _find(browser, "input[name=role][value=developer]").click()
        _find(browser, "form button[type=submit]").click()
        _wait(browser, _shown("#who .user", USER), message="the console did not log in")

        # the access token the tab holds is no longer accepted; a page load sends two requests
        # with it at once (GET /v1/me, the runs list): one refresh renews it for both
        refused = stranger.sign(USER, ["developer"])
        browser.execute_script("sessionStorage.setItem('forge.token', arguments[0]);", refused)
        browser.get(f"{gateway}/runs?repository=acme/renewal")
        _wait(browser, _shown("#runs-title", "0 runs in acme/renewal"), message="the runs list did not load")
        _wait(browser, _shown("#who .user", USER), message="the header does not say who")
        assert browser.execute_script(_TOKEN_REQUESTS) == 1
        renewed = browser.execute_script("return sessionStorage.getItem('forge.token');")
        assert renewed not in (None, refused)
        assert browser.find_elements("css selector", "main .warning, main .error") == []

        # a run's event stream refused the same way: renewed and asked again (no such run: the
        # stream's own answer, 404, and the user stays signed in)
        browser.execute_script("sessionStorage.setItem('forge.token', arguments[0]);", refused)
        ended = browser.execute_async_script(_READ_EVENTS, f"/v1/runs/{uuid.uuid4()}/events")
        assert ended.startswith("ApiError 404: "), ended
        assert browser.execute_script(_TOKEN_REQUESTS) == 2
        assert browser.execute_script("return sessionStorage.getItem('forge.token');") not in (None, refused, renewed)
        assert _find(browser, "#who .user").text == USER
        assert browser.find_elements("css selector", "main .warning") == []
