""" "Use an access token" in the browser: the console keeps a pasted token only once the gateway's
``GET /v1/me`` accepts it, shows who the gateway says is signed in (name, roles, the repository a
repository-bound token is limited to), and sends the user back to sign in when the gateway stops
accepting the token, wherever that shows (a page, a run followed live, a step's log)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from forge_dev.keys import IssuerKeys
from forge_dev.stack import free_port
from forge_dev.testing import Platform

from .conftest import Lane
from .test_console import _find, _paste_token, _shown, _wait

# What the browser keeps: nothing in localStorage ever, the token in sessionStorage once accepted.
_STORAGE = "return [localStorage.length, Object.keys(sessionStorage).sort()];"
_ME_REQUESTS = (
    "return performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname === '/v1/me').length;"
)


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


def test_a_developer_token_signs_in_and_the_header_says_who_it_is(
    platform: Platform, browser: Any, screenshots: Callable[[Any, str], Path]
) -> None:
    gateway = platform.gateway_url
    user = _user()
    token = platform.keys.sign(user, ["developer", "viewer"], extra={"name": "Dana Developer"})
    # pasted as a header value, wrapped as a terminal copies it: the console takes the token out
    wrapped = "Bearer " + "\n".join(token[i : i + 80] for i in range(0, len(token), 80))
    _submit_token(browser, gateway, wrapped)

    _wait(browser, lambda d: d.current_url == f"{gateway}/runs", message="not taken to the runs page")
    who = _wait(browser, _shown("#who .user", "Dana Developer"), message="the header does not say who")
    assert f"acts as {user}" in who.get_attribute("title")
    assert _find(browser, "#who .roles").text == "developer, viewer"
    assert browser.find_elements("css selector", "#who .repository") == []
    screenshots(browser, "signed-in")
    assert browser.execute_script("return sessionStorage.getItem('forge.token');") == token
    assert browser.execute_script(_STORAGE) == [0, ["forge.token"]]
    # the check's answer is the header's: one GET /v1/me for the sign-in, none per page
    _find(browser, "nav a[data-nav=releases]").click()
    _wait(browser, lambda d: d.current_url.startswith(f"{gateway}/releases"))
    _wait(browser, _shown("#who .user", "Dana Developer"))
    assert browser.execute_script(_ME_REQUESTS) == 1

    # a new page load asks once again
    browser.get(f"{gateway}/environments")
    _wait(browser, _shown("#who .user", "Dana Developer"))
    assert browser.execute_script(_ME_REQUESTS) == 1

    # "Log out" forgets the token
    _find(browser, "#who button").click()
    _wait(browser, _shown("#token-input"))
    _wait(browser, _shown("#who a", "Log in"))
    assert browser.execute_script(_STORAGE) == [0, []]


def test_a_repository_bound_token_says_which_repository_it_is_limited_to(
    platform: Platform, browser: Any, screenshots: Callable[[Any, str], Path]
) -> None:
    gateway = platform.gateway_url
    user = _user()
    token = platform.keys.sign(user, ["developer"], extra={"forge_repository": "acme/app"})
    _submit_token(browser, gateway, token)
    _wait(browser, _shown("#who .repository", "limited to acme/app"), message="the header does not name the repository")
    assert _find(browser, "#who .user").text == user  # no name claim: the user name
    assert _find(browser, "#who .roles").text == "developer"
    assert "null" not in _find(browser, "#who").text  # no empty field of the answer shows
    screenshots(browser, "signed-in-repository-bound")


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


def test_a_token_the_gateway_no_longer_accepts_sends_the_user_to_sign_in(
    platform: Platform, browser: Any, tmp_path: Path
) -> None:
    gateway = platform.gateway_url
    user = _user()

    # a token kept in the tab that the gateway refuses (401 from GET /v1/me): signed out, asked
    # to sign in on the page asked for, and the sign-in goes back there
    stranger = IssuerKeys.load_or_create(tmp_path / "stranger.json", platform.issuer_url).sign(user, ["developer"])
    browser.get(f"{gateway}/login")
    _wait(browser, _shown("#token-input"))
    browser.execute_script("sessionStorage.setItem('forge.token', arguments[0]);", stranger)
    browser.get(f"{gateway}/releases")
    _wait(browser, _shown("main .warning", "no longer accepts your token"), message="not sent to sign in")
    assert _find(browser, "#token-input")
    assert browser.execute_script(_STORAGE) == [0, []]
    assert _find(browser, "#who a").text == "Log in"
    _find(browser, "#token-input").send_keys(platform.token(user, "viewer"))
    _find(browser, "#token-form button[type=submit]").click()
    _wait(browser, lambda d: d.current_url == f"{gateway}/releases", message="not taken back to the page")
    _wait(browser, _shown("#who .user", user))

    # a token that expires while signed in: the next page asks for a sign-in and forgets it
    expires_at = time.time() + 10
    _submit_token(browser, gateway, platform.token(user, "viewer", expires_in=10))
    _wait(browser, _shown("#who .user", user))
    time.sleep(max(0.0, expires_at + 1 - time.time()))
    _find(browser, "nav a[data-nav=approvals]").click()
    _wait(browser, _shown("main .warning", "Your token has expired"), message="not sent to sign in")
    assert browser.execute_script(_STORAGE) == [0, []]


# The console's SSE reader (static/js/sse.js) on the URL given; resolves with how it ended.
_READ_EVENTS = """
const [url, done] = arguments;
const app = document.querySelector('script[type=module]').src;
import(app.replace(/js\\/app\\.js$/, 'js/sse.js'))
  .then(({ readEventStream }) => readEventStream(url, { onEvent: () => {} }))
  .then(() => done('read to its end'), (err) => done(`${err.name} ${err.status}: ${err.message}`));
"""


def test_an_event_stream_the_gateway_refuses_sends_the_user_to_sign_in(
    platform: Platform, browser: Any, tmp_path: Path
) -> None:
    gateway = platform.gateway_url
    user = _user()
    _submit_token(browser, gateway, platform.token(user, "viewer"))
    _wait(browser, _shown("#who .user", user))
    browser.get(f"{gateway}/releases")  # a page that asks nothing by itself once drawn
    _wait(browser, _shown("#who .user", user))

    # the token the tab holds is no longer accepted: the first request refused is a run's event
    # stream (as a run page's live view reads it); the session ends there and then
    stranger = IssuerKeys.load_or_create(tmp_path / "stranger.json", platform.issuer_url).sign(user, ["viewer"])
    browser.execute_script("sessionStorage.setItem('forge.token', arguments[0]);", stranger)
    ended = browser.execute_async_script(_READ_EVENTS, f"/v1/runs/{uuid.uuid4()}/events")
    assert ended.startswith("ApiError 401: "), ended
    _wait(browser, _shown("main .warning", "no longer accepts your token"), message="not sent to sign in")
    assert _find(browser, "#token-input")
    assert browser.current_url == f"{gateway}/releases"
    assert browser.execute_script(_STORAGE) == [0, []]
    assert _find(browser, "#who a").text == "Log in"


# One phase, one step running ``command``.
def _project(command: str) -> dict[str, str]:
    return {
        ".forge/repo.toml": 'forge_version = "1"\n[phases.test]\ngroup = 1\n',
        "api/.forge/project.toml": f'name = "api"\n[[phases.test.steps]]\nname = "unit"\naction = "shell"\nrun = """{command}"""\n',
        "api/app.txt": "v1\n",
    }


def _start_run(platform: Platform, lane: Lane, user: str, command: str) -> tuple[str, str]:
    """A repository whose one step runs ``command``, and a run of it; ``(gateway, run id)``."""
    repository = f"acme{lane.tag}/session-end"
    sha = lane.repo(repository, user).commit(_project(command))
    gateway = lane.start()
    resp = httpx.post(
        f"{gateway}/v1/runs",
        json={"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
        headers=platform.headers(user, "developer"),
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return gateway, str(resp.json()["id"])


def _until_run(browser: Any, platform: Platform, lane: Lane, gateway: str, run_id: str, check: Any) -> None:
    """Until ``check(run)`` holds for ``GET /v1/runs/{id}`` (asked with a token of the test's own)."""
    headers = platform.headers("console-test@acme.io", "viewer")
    with httpx.Client(base_url=gateway, headers=headers, timeout=10) as client:
        _wait(
            browser,
            lambda _: check(client.get(f"/v1/runs/{run_id}").raise_for_status().json()),
            timeout=120,
            message=f"the run did not get there\n{lane.log_tails()}",
        )


def _until_refused(browser: Any, gateway: str, token: str) -> None:
    """Until the gateway refuses ``token``: an expired token is accepted for the verifier's leeway."""
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        _wait(
            browser,
            lambda _: client.get("/v1/me").status_code == 401,
            timeout=60,
            message="the token is still accepted",
        )


def _exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def _steps(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for phase in run["phases"] for task in phase["tasks"] for step in task["steps"]]


def _sign_in_again(browser: Any, platform: Platform, user: str, page: str) -> None:
    """The login form shown on ``page``: a new token takes the user back there."""
    _find(browser, "#token-input").send_keys(platform.token(user, "developer"))
    _find(browser, "#token-form button[type=submit]").click()
    _wait(browser, _shown("#who .user", user), message="the new token was not accepted")
    assert browser.current_url == page


@pytest.mark.slow
def test_a_token_that_expires_while_a_run_is_watched_sends_the_user_to_sign_in(
    platform: Platform, lane: Lane, browser: Any
) -> None:
    user = _user()
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    gateway, run_id = _start_run(platform, lane, user, f"echo waiting; {lane.wait_for(gate)}; echo released")
    _until_run(browser, platform, lane, gateway, run_id, lambda run: [s["status"] for s in _steps(run)] == ["running"])

    # a token that expires soon, watching the running run live
    page = f"{gateway}/runs/{run_id}"
    token = platform.token(user, "developer", expires_in=6)
    _paste_token(browser, gateway, token, f"/runs/{run_id}")
    _wait(browser, _shown("#live-note", "Live."), message="the run is not followed live")
    _wait(browser, _shown('#run-tree .step[data-status="running"]'))

    # at the token's exp the gateway ends the stream; the page reconnects, and a pasted token
    # cannot be renewed: the stream is refused (401), and the user is asked to sign in on the
    # page while the run still runs (nothing more was read with the expired token)
    warning = _wait(browser, _shown("main .warning", "no longer accepts your token"), message="not sent to sign in")
    assert time.time() < _exp(token) + 10  # before the verifier's leeway would refuse any request
    assert "token has expired" in warning.text
    lane.signal(gate)
    assert _find(browser, "#token-input")
    assert browser.current_url == page
    assert browser.execute_script(_STORAGE) == [0, []]
    assert _find(browser, "#who a").text == "Log in"

    # signing in again shows the run as it ended
    _sign_in_again(browser, platform, user, page)
    _wait(browser, _shown("main[data-run-status=success]"), message="the run page did not show the finished run")


@pytest.mark.slow
def test_a_token_that_expires_before_a_log_is_opened_sends_the_user_to_sign_in(
    platform: Platform, lane: Lane, browser: Any
) -> None:
    user = _user()
    gateway, run_id = _start_run(platform, lane, user, "echo hello from the log")
    _until_run(browser, platform, lane, gateway, run_id, lambda run: run["status"] == "success")

    # the finished run's page, read with a token that expires soon
    page = f"{gateway}/runs/{run_id}"
    token = platform.token(user, "developer", expires_in=10)
    _paste_token(browser, gateway, token, f"/runs/{run_id}")
    _wait(browser, _shown('#run-tree .step[data-status="success"]'), message="the run page did not load")

    # once the gateway no longer accepts it, opening the step's log asks for a sign-in
    _until_refused(browser, gateway, token)
    _find(browser, "#run-tree .step .log-panel summary").click()
    warning = _wait(browser, _shown("main .warning", "no longer accepts your token"), message="not sent to sign in")
    assert "token has expired" in warning.text
    assert browser.find_elements("css selector", "pre.log") == []  # no "The log could not be read"
    assert browser.current_url == page
    assert browser.execute_script(_STORAGE) == [0, []]
    assert _find(browser, "#who a").text == "Log in"

    # signed in again, the log opens
    _sign_in_again(browser, platform, user, page)
    _wait(browser, _shown("#run-tree .step .log-panel summary")).click()
    _wait(browser, _shown("#run-tree pre.log", "hello from the log"), message="the log did not show")
