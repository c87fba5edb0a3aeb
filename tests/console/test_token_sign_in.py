""" "Use an access token" in the browser: the console keeps a pasted token only once the gateway's
``GET /v1/me`` accepts it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forge_dev.keys import IssuerKeys
from forge_dev.stack import free_port
from forge_dev.testing import Platform

from .test_console import _find, _shown, _wait

# What the browser keeps: nothing in localStorage ever, the token in sessionStorage once accepted.
_STORAGE = "return [localStorage.length, Object.keys(sessionStorage).sort()];"


def _user() -> str:
    return f"pat-{uuid.uuid4().hex[:8]}@acme.io"


def _submit_token(browser: Any, gateway: str, token: str) -> None:
    browser.get(f"{gateway}/login")
    box = _wait(browser, _shown("#token-input"))
    box.clear()
    box.send_keys(token)
    _find(browser, "#token-form button[type=submit]").click()


def _refused(browser: Any, text: str) -> str:
    """The refusal shown in the token form, once it contains ``text``; nothing kept."""
    shown = _wait(browser, _shown("#token-form #token-status .error", text), message=f"no refusal with {text!r}").text
    assert _find(browser, "#token-input").get_attribute("aria-invalid") == "true"
    assert browser.execute_script(_STORAGE) == [0, []]
    assert _find(browser, "#who a").text == "Log in"
    return str(shown)


def test_an_expired_or_invalid_token_is_refused_with_the_gateways_message(
    platform: Platform, browser: Any, tmp_path: Path, screenshots: Callable[[Any, str], Path]
) -> None:
    gateway = platform.gateway_url
    user = _user()

    # expired: the gateway's message and status in the form, nothing kept, still signed out
    _submit_token(browser, gateway, platform.token(user, "developer", expires_in=-120))
    shown = _refused(browser, "token has expired")
    assert "HTTP 401" in shown
    assert browser.current_url == f"{gateway}/login"
    screenshots(browser, "token-refused")

    # signed by a key the issuer never published (the same issuer name): refused the same way
    stranger = IssuerKeys.load_or_create(tmp_path / "stranger.json", platform.issuer_url)
    _submit_token(browser, gateway, stranger.sign(user, ["developer"]))
    _refused(browser, "HTTP 401")

    # not a JWT at all: the gateway says so too
    _submit_token(browser, gateway, "not-a-token")
    _refused(browser, "HTTP 401")

    # and the pages still ask for a sign-in
    browser.get(f"{gateway}/runs")
    _wait(browser, _shown("#token-input"))
    assert browser.execute_script(_STORAGE) == [0, []]


def test_a_gateway_that_cannot_check_the_token_keeps_nothing(
    platform: Platform, browser: Any, screenshots: Callable[[Any, str], Path]
) -> None:
    # A gateway whose identity provider's key set cannot be fetched answers 503 for any token.
    dead = f"http://127.0.0.1:{free_port()}/certs"
    gateway = platform.start_process("gateway", env={"FORGE_OIDC_JWKS_URL": dead})
    try:
        _submit_token(browser, gateway.url, platform.token(_user(), "developer"))
        shown = _refused(browser, "HTTP 503")
        assert "could not check the token, so it was not kept" in _find(browser, "#token-status").text
        assert "Checking this token failed" in shown

        # the same page once the gateway is gone: unreachable, nothing kept
        gateway.stop(timeout=5)
        _find(browser, "#token-form button[type=submit]").click()
        _refused(browser, "cannot be reached")
        screenshots(browser, "token-not-checked")
    finally:
        gateway.stop(timeout=5)
