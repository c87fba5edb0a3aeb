""" "Log in" through the issuer, in the browser: authorization code with PKCE (S256) against the
platform's dev issuer (Keycloak's paths, its login form, the realm's public client ``forge-cli``),
then the console calls the API with the token it got."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from forge_dev.keys import IssuerKeys
from forge_dev.testing import Platform

from .conftest import Lane, start_browser
from .test_console import _find, _shown, _wait
from .test_token_sign_in import _READ_EVENTS, _exp, _start_run, _steps, _until_run

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


def _sign_in(browser: Any, gateway: str) -> None:
    """Through the dev issuer, as USER with the developer role, from the releases page."""
    browser.get(f"{gateway}/releases")
    _wait(browser, _shown("#login-issuer")).click()
    _wait(browser, _shown("input[name=username]")).send_keys(USER)
    _find(browser, "input[name=role][value=developer]").click()
    _find(browser, "form button[type=submit]").click()
    _wait(browser, _shown("#who .user", USER), message="the console did not log in")


def test_a_token_the_gateway_refuses_is_renewed_once_with_the_refresh_token(platform: Platform, tmp_path: Path) -> None:
    gateway = platform.gateway_url
    stranger = IssuerKeys.load_or_create(tmp_path / "stranger.json", platform.issuer_url)
    with start_browser(tmp_path / "profile", "--disable-web-security") as browser:
        _sign_in(browser, gateway)

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


@pytest.mark.slow
def test_an_issuer_login_renews_its_token_when_the_streams_end_with_it_and_goes_on(
    platform: Platform, lane: Lane, tmp_path: Path
) -> None:
    gates = [f"gate-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    command = f"echo hi; {lane.wait_for(gates[0])}; echo bye; {lane.wait_for(gates[1])}"
    gateway, run_id = _start_run(platform, lane, USER, command)
    with start_browser(tmp_path / "profile", "--disable-web-security") as browser:
        _until_run(
            browser, platform, lane, gateway, run_id, lambda run: [s["status"] for s in _steps(run)] == ["running"]
        )
        _sign_in(browser, gateway)

        # the access token the tab holds expires in a few seconds (the login's refresh token is
        # kept); the running run is followed live, and its step's log too
        short = platform.token(USER, "developer", expires_in=6)
        browser.execute_script("sessionStorage.setItem('forge.token', arguments[0]);", short)
        page = f"{gateway}/runs/{run_id}"
        browser.get(page)
        _wait(browser, _shown("#live-note", "Live."), message="the run is not followed live")
        _wait(browser, _shown('#run-tree .step[data-status="running"] .log-panel summary')).click()
        _wait(browser, _shown("#run-tree pre.log", "hi"), message="the log is not followed")

        # at exp the gateway ends both streams; reconnecting renews the token (once, for both)
        _wait(
            browser,
            lambda d: d.execute_script("return sessionStorage.getItem('forge.token');") not in (None, short),
            message="the token was not renewed",
        )
        assert time.time() >= _exp(short)
        assert browser.execute_script(_TOKEN_REQUESTS) == 1  # one refresh since the run page was loaded

        # and both go on where they stopped: the log shows what the step prints next while it
        # still runs (nothing twice), the page the run's end
        lane.signal(gates[0])
        _wait(browser, _shown("#run-tree pre.log", "bye"), message="the log did not go on")
        assert _find(browser, "#run-tree pre.log").text == "hi\nbye"
        assert _find(browser, "#run-tree .step").get_attribute("data-status") == "running"
        lane.signal(gates[1])
        _wait(browser, _shown("main[data-run-status=success]"), message="the run page did not go on")
        assert _find(browser, "#run-tree pre.log").text == "hi\nbye"
        assert _find(browser, "#live-note").text == "Live."
        assert _find(browser, "#who .user").text == USER
        assert browser.find_elements("css selector", "main .warning, main .error") == []
        assert browser.current_url == page
