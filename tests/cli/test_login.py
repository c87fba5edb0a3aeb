"""``forge login``, contexts, refresh and logout, against the platform's dev issuer.

The test plays the browser: it reads the authorization URL the CLI prints, opens it with an
HTTP client, submits the dev login form, and follows the redirect to the CLI's loopback server.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest

from forge_dev.stack import Process, free_port
from forge_dev.testing import Platform

from .test_cli import Result

USER = "login.dev@acme.io"


class Forge:
    """``forge`` with its own config directory (``XDG_CONFIG_HOME``), as one user's machine."""

    def __init__(self, home: Path, api: str) -> None:
        self.home = home
        self.api = api

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config")}

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "forge" / "config.json"

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_file.read_text())
        return data

    def write_config(self, data: dict[str, Any]) -> None:
        self.config_file.write_text(json.dumps(data))

    def __call__(self, *args: str, stdin: str | None = None, api: bool = True) -> Result:
        cmd = [sys.executable, "-m", "forge_cli", *(["--api", self.api] if api else []), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, env=self.env, check=False)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def login(self, username: str, roles: list[str], *extra: str) -> tuple[Result, str]:
        """A browser login; returns the CLI's result and the login form page the user saw."""
        cmd = [sys.executable, "-m", "forge_cli", "--api", self.api, "login", "--no-browser", *extra]
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=self.env
        ) as proc:
            try:
                assert proc.stderr is not None
                url = ""
                seen = []
                for line in proc.stderr:
                    seen.append(line)
                    if line.startswith("http"):
                        url = line.strip()
                        break
                assert url, f"the CLI printed no authorization URL: {seen}"
                page = complete_login_in_browser(url, username, roles)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
        return Result(proc.returncode, out, "".join(seen) + err), page


def login_form_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))


def complete_login_in_browser(url: str, username: str, roles: list[str]) -> str:
    with httpx.Client(timeout=30) as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        form = [*login_form_fields(page.text).items(), ("username", username), *(("role", r) for r in roles)]
        answer = browser.post(
            url.split("?", 1)[0],
            content=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith("http://127.0.0.1:")
        landed = browser.get(location)
        assert landed.status_code == 200, landed.text
        assert "Signed in" in landed.text
        return page.text


@pytest.fixture
def user(tmp_path: Path, platform: Platform) -> Forge:
    return Forge(tmp_path, platform.gateway_url)


def _repo() -> str:
    return f"login-{uuid.uuid4().hex[:8]}/shop"


def _sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def test_gateway_names_its_issuer_without_a_token(platform: Platform) -> None:
    meta = httpx.get(f"{platform.gateway_url}/v1/meta", timeout=10)
    assert meta.status_code == 200
    assert meta.json()["oidc_issuer"] == platform.issuer_url
    assert meta.json()["oidc_audience"] == "forge"


def test_login_with_pkce_then_the_api_with_the_stored_token(user: Forge, platform: Platform) -> None:
    res, page = user.login(USER, ["developer", "viewer"])
    assert res.code == 0, res
    assert "Open this URL in a browser" in res.stderr
    assert 'name="role" value="approver"' in page
    summary = res.json
    assert summary["user"] == USER
    assert sorted(summary["roles"]) == ["developer", "viewer"]
    assert summary["current"] is True
    assert summary["refreshable"] is True
    assert summary["api"] == platform.gateway_url

    # the tokens are the user's alone
    assert stat.S_IMODE(user.config_file.stat().st_mode) == 0o600
    context = user.config()["contexts"][summary["name"]]
    assert context["refresh_token"]
    assert context["issuer"] == platform.issuer_url

    # the spec's lifetimes: 60 minutes (access), 30 days (refresh)
    assert 3600 - 120 < context["expires_at"] - time.time() <= 3600
    assert 30 * 86400 - 120 < context["refresh_expires_at"] - time.time() <= 30 * 86400

    repo, sha = _repo(), _sha()
    created = user("runs", "create", "--repository", repo, "--branch", "main", "--commit", sha)
    assert created.code == 0, created
    got = user("runs", "get", created.json["id"])
    assert got.code == 0, got
    assert got.json["triggered_by"] == USER

    # the API URL comes from the current context when --api is not given
    listed = user("runs", "list", "--repository", repo, api=False)
    assert listed.code == 0, listed
    assert listed.json["total"] == 1


def test_an_expired_access_token_is_refreshed_and_the_refresh_token_rotated(user: Forge, platform: Platform) -> None:
    res, _ = user.login(USER, ["viewer"])
    assert res.code == 0, res
    name = res.json["name"]
    config = user.config()
    first_refresh = config["contexts"][name]["refresh_token"]
    # the stored access token has expired (the gateway refuses it), as the CLI knows from expires_at
    config["contexts"][name]["access_token"] = platform.token(USER, "viewer", expires_in=-120)
    config["contexts"][name]["expires_at"] = 1.0
    user.write_config(config)

    listed = user("runs", "list", "--repository", _repo())
    assert listed.code == 0, listed
    assert listed.json["total"] == 0
    after = user.config()["contexts"][name]
    assert after["refresh_token"] != first_refresh
    assert after["expires_at"] > 1.0
    assert stat.S_IMODE(user.config_file.stat().st_mode) == 0o600

    # a copied (already rotated) refresh token is refused, and ends the session: log in again
    after["refresh_token"] = first_refresh
    after["access_token"] = platform.token(USER, "viewer", expires_in=-120)
    after["expires_at"] = 1.0
    user.write_config({**user.config(), "contexts": {name: after}})
    refused = user("runs", "list", "--repository", _repo())
    assert refused.code == 4, refused
    assert refused.stdout == ""
    assert "forge login" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_login_with_token_from_stdin_then_logout(user: Forge, platform: Platform) -> None:
    token = platform.token("stdin.user@acme.io", "viewer")
    res = user("login", "--with-token", stdin=token + "\n")
    assert res.code == 0, res
    assert res.json["user"] == "stdin.user@acme.io"
    assert res.json["roles"] == ["viewer"]
    assert res.json["refreshable"] is False

    listed = user("runs", "list", "--repository", _repo())
    assert listed.code == 0, listed

    out = user("logout")
    assert out.code == 0, out
    assert out.json["user"] is None
    again = user("runs", "list", "--repository", _repo())
    assert again.code == 1, again
    assert "no token" in again.stderr
    assert "forge login" in again.stderr

    empty = user("login", "--with-token", stdin="")
    assert empty.code == 1, empty
    assert "--with-token" in empty.stderr


def test_login_with_token_stores_only_a_token_the_gateway_accepts(user: Forge, platform: Platform) -> None:
    def refused(res: Result, code: int, start: str) -> None:
        assert res.code == code, res
        assert res.stdout == ""
        assert res.stderr.startswith(start), res
        assert res.stderr.rstrip().endswith("nothing stored"), res
        assert "Traceback" not in res.stderr

    # Not a token at all: refused before anything is sent, and no config file is created.
    refused(user("login", "--with-token", stdin="hunter2\n"), 1, "forge: standard input does not hold a token")
    refused(user("login", "--with-token", stdin="a.b.c"), 1, "forge: standard input does not hold a token")
    # A token, but one the gateway refuses (expired): its 401, exit status 4 as for a refused login.
    expired = platform.token("stdin.user@acme.io", "viewer", expires_in=-120)
    refused(
        user("login", "--with-token", stdin=expired),
        4,
        "forge: the gateway refused the token: 401 authentication_failed: ",
    )
    # A good token for a gateway that does not answer: not stored unchecked.
    token = platform.token("stdin.user@acme.io", "viewer")
    nowhere = Forge(user.home, "http://127.0.0.1:9")
    refused(nowhere("login", "--with-token", stdin=token), 1, "forge: cannot reach http://127.0.0.1:9")
    assert not user.config_file.exists()

    # `forge dev token` gives a token the gateway accepts: stored.
    dev = user("dev", "token", "--sub", "dev.user@acme.io", "--role", "developer", "--data-dir", str(platform.data_dir))
    assert dev.code == 0, dev
    stored = user("login", "--with-token", stdin=dev.stdout)
    assert stored.code == 0, stored
    assert (stored.json["user"], stored.json["roles"]) == ("dev.user@acme.io", ["developer"])
    before = user.config_file.read_bytes()

    # A refused login leaves the saved login as it was, byte for byte.
    refused(user("login", "--with-token", stdin=expired), 4, "forge: the gateway refused the token: ")
    refused(user("login", "--with-token", stdin="not-a-token"), 1, "forge: standard input does not hold a token")
    assert user.config_file.read_bytes() == before
    assert user("runs", "list", "--repository", _repo()).code == 0


@pytest.fixture
def services_down(platform: Platform) -> Iterator[Process]:
    """A gateway of the platform (its issuer, its keys) in front of services that are all down."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = {f"FORGE_{name}_URL": dead for name in ("PIPELINE", "RELEASE", "DEPLOYMENT", "APPROVAL")}
    gateway = platform.start_process("gateway", env)
    yield gateway
    gateway.stop()


def test_login_with_token_needs_the_gateway_only_not_its_services(
    tmp_path: Path, platform: Platform, services_down: Process
) -> None:
    assert services_down.url is not None
    user = Forge(tmp_path, services_down.url)
    # The services are down indeed: a command that needs one fails with the gateway's 502.
    down = user("runs", "list", "--repository", _repo(), "--token", platform.token("down.user@acme.io", "viewer"))
    assert down.code == 5, down
    assert down.stderr.startswith("forge: 502 bad_gateway: "), down

    # A token the gateway refuses is still refused, and nothing is stored.
    expired = platform.token("down.user@acme.io", "developer", expires_in=-120)
    refused = user("login", "--with-token", stdin=expired)
    assert refused.code == 4, refused
    assert refused.stdout == ""
    assert refused.stderr.startswith("forge: the gateway refused the token: 401 authentication_failed: "), refused
    assert refused.stderr.rstrip().endswith("nothing stored"), refused
    assert not user.config_file.exists()

    # A good one is checked by the gateway alone and stored, with who the gateway says it is.
    token = platform.keys.sign("down.user@acme.io", ["developer", "viewer"], extra={"name": "Dee Down"})
    stored = user("login", "--with-token", stdin=token + "\n")
    assert stored.code == 0, stored
    assert (stored.json["user"], stored.json["roles"]) == ("down.user@acme.io", ["developer", "viewer"])
    assert stored.json["api"] == services_down.url
    assert user.config()["contexts"][stored.json["name"]]["access_token"] == token
    # ... and `forge whoami` answers with the services still down.
    me = user("whoami")
    assert me.code == 0, me
    assert (me.json["identity"], me.json["name"], me.json["roles"]) == (
        "down.user@acme.io",
        "Dee Down",
        ["developer", "viewer"],
    )


def test_login_with_token_when_the_gateway_cannot_check_it(tmp_path: Path, platform: Platform) -> None:
    # The identity provider's key set cannot be fetched: the gateway answers 503, not 401 (the
    # token may be fine), and the CLI stores nothing and exits 5 as for any platform failure.
    gateway = platform.start_process("gateway", {"FORGE_OIDC_JWKS_URL": f"http://127.0.0.1:{free_port()}/certs"})
    try:
        assert gateway.url is not None
        user = Forge(tmp_path, gateway.url)
        res = user("login", "--with-token", stdin=platform.token("jwks.user@acme.io", "viewer"))
        assert res.code == 5, res
        assert res.stdout == ""
        assert res.stderr.startswith("forge: the gateway could not check the token: 503 service_unavailable: "), res
        assert res.stderr.rstrip().endswith("nothing stored"), res
        assert not user.config_file.exists()
    finally:
        gateway.stop()


def test_whoami_prints_who_the_gateway_takes_the_token_for(user: Forge, platform: Platform) -> None:
    token = platform.keys.sign("who.user@acme.io", ["viewer"], extra={"name": "Wendy Who"})
    assert user("login", "--with-token", stdin=token).code == 0

    me = user("whoami")  # piped: the API's document, unchanged
    assert me.code == 0, me
    expires_at = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(jwt.decode(token, options={"verify_signature": False})["exp"])
    )
    assert me.json == {
        "subject": "who.user@acme.io",
        "identity": "who.user@acme.io",
        "name": "Wendy Who",
        "email": "who.user@acme.io",
        "username": "who.user@acme.io",
        "roles": ["viewer"],
        "service_account": False,
        "repository": None,
        "issuer": platform.issuer_url,
        "expires_at": expires_at,
    }
    assert user("whoami", "-o", "json").json == me.json
    assert user("-o", "yaml", "whoami").stdout.startswith("subject: who.user@acme.io\n")

    table = user("whoami", "-o", "table")
    assert table.code == 0, table
    rows = {
        line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in table.stdout.splitlines() if line.strip()
    }
    assert rows["subject"] == "who.user@acme.io"
    assert rows["name"] == "Wendy Who"
    assert rows["roles"] == '["viewer"]'
    assert rows["repository"] == "-"
    assert rows["expires_at"] == expires_at

    # --token wins over the context: a repository-bound token says which repository it is bound to.
    bound = platform.keys.sign(
        "repo:acme/app:ref:refs/heads/main", ["developer"], extra={"forge_repository": "acme/app"}
    )
    other = user("whoami", "--token", bound)
    assert other.code == 0, other
    assert (other.json["subject"], other.json["repository"], other.json["email"]) == (
        "repo:acme/app:ref:refs/heads/main",
        "acme/app",
        None,
    )

    # Refusals are the usual one line.
    expired = user("whoami", "--token", platform.token("who.user@acme.io", "viewer", expires_in=-120))
    assert expired.code == 1, expired
    assert expired.stdout == ""
    assert expired.stderr.startswith("forge: 401 authentication_failed: token has expired"), expired
    assert user("logout").code == 0
    nobody = user("whoami")
    assert nobody.code == 1, nobody
    assert "no token" in nobody.stderr


def test_contexts_list_and_use(user: Forge, platform: Platform) -> None:
    token = platform.token("ctx.user@acme.io", "viewer")
    assert user("login", "--with-token", "--context", "local", stdin=token).code == 0
    # A second gateway's context, the current one, as a login there left it (it is down now).
    config = user.config()
    config["contexts"]["elsewhere"] = {**config["contexts"]["local"], "api": "http://127.0.0.1:9"}
    config["current_context"] = "elsewhere"
    user.write_config(config)

    listed = user("context", "list", api=False).json["contexts"]
    assert [(c["name"], c["current"], c["api"]) for c in listed] == [
        ("elsewhere", True, "http://127.0.0.1:9"),
        ("local", False, platform.gateway_url),
    ]
    # the current context's gateway is not this one: its token is never sent here
    res = user("runs", "list", "--repository", _repo())
    assert res.code == 1
    assert "no token" in res.stderr

    used = user("context", "use", "local", api=False)
    assert used.code == 0, used
    assert used.json["current"] is True
    assert user("runs", "list", "--repository", _repo(), api=False).code == 0
    # --context picks a context for one command
    via = user("--context", "elsewhere", "runs", "list", "--repository", _repo(), api=False)
    assert via.code == 1
    assert via.stderr.startswith("forge: cannot reach http://127.0.0.1:9"), via

    unknown = user("context", "use", "nowhere", api=False)
    assert unknown.code == 1
    assert "nowhere" in unknown.stderr


def test_login_with_an_unreachable_issuer_says_so(user: Forge) -> None:
    res = user("login", "--no-browser", "--issuer", "http://127.0.0.1:9/realms/forge")
    assert res.code == 1, res
    assert res.stderr.startswith("forge: cannot reach http://127.0.0.1:9"), res


def test_concurrent_commands_refresh_once_and_all_succeed(user: Forge, platform: Platform) -> None:
    res, _ = user.login(USER, ["viewer"])
    assert res.code == 0, res
    name = res.json["name"]
    config = user.config()
    config["contexts"][name]["access_token"] = platform.token(USER, "viewer", expires_in=-120)
    config["contexts"][name]["expires_at"] = 1.0
    user.write_config(config)

    # each would refresh; a refresh token presented twice ends the session, so they must take turns
    cmd = [sys.executable, "-m", "forge_cli", "--api", user.api, "runs", "list", "--repository", _repo()]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user.env) for _ in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    assert user("runs", "list", "--repository", _repo()).code == 0


def test_logout_ends_the_session_at_the_issuer(user: Forge, platform: Platform) -> None:
    res, _ = user.login(USER, ["viewer"])
    assert res.code == 0, res
    refresh_token = user.config()["contexts"][res.json["name"]]["refresh_token"]

    out = user("logout")
    assert out.code == 0, out
    assert out.json["refreshable"] is False
    assert user.config()["contexts"][res.json["name"]]["refresh_token"] is None
    # a copy of the refresh token is worthless now
    answer = httpx.post(
        f"{platform.issuer_url}/protocol/openid-connect/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "forge-cli"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
