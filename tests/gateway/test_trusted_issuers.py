"""The trusted-issuers file of workload identity: a bad one stops the gateway's start with every
problem named, before any token is exchanged (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_common.settings import SettingsError, load
from forge_gateway.settings import Settings
from forge_gateway.token_exchange import load_trusted_issuers

GOOD = """
[[issuers]]
issuer = "https://token.actions.githubusercontent.com"
jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
audience = "forge"
[[issuers.rules]]
claims = { repository = "acme/*", ref = "refs/heads/main" }   # every listed claim must match (globs)
role = "developer"
repository_claim = "repository"
"""


def test_the_documented_form_loads(tmp_path: Path) -> None:
    path = tmp_path / "issuers.toml"
    path.write_text(GOOD)
    [issuer] = load_trusted_issuers(str(path))
    assert issuer.audience == "forge"
    assert issuer.rules[0].claims == {"repository": "acme/*", "ref": "refs/heads/main"}
    assert issuer.rules[0].role == "developer"


def test_every_problem_is_named_and_the_start_refused(tmp_path: Path) -> None:
    path = tmp_path / "issuers.toml"
    path.write_text(
        GOOD.replace('role = "developer"', 'role = "worker"').replace('audience = "forge"', 'audience = ""')
        + '[[issuers]]\nissuer = "https://gitlab.example.com"\njwks_url = "ftp://x"\naudience = "forge"\n'
    )
    with pytest.raises(ValueError, match="role") as raised:
        load_trusted_issuers(str(path))
    message = str(raised.value)
    assert "role 'worker'" in message
    assert "audience must be set" in message
    assert "jwks_url must be an http(s) URL" in message
    assert "issuers[1]: no rules" in message
    with pytest.raises(SettingsError, match="FORGE_TRUSTED_ISSUERS"):
        load(Settings, environ={"FORGE_TRUSTED_ISSUERS": str(path)})
    with pytest.raises(SettingsError, match="FORGE_WORKLOAD_TOKEN_LIFETIME"):
        load(Settings, environ={"FORGE_WORKLOAD_TOKEN_LIFETIME": "1h"})
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="FORGE_WORKLOAD_SIGNING_KEY"):
        load(Settings, environ={"FORGE_WORKLOAD_SIGNING_KEY": str(tmp_path / "key.pem")})
    (tmp_path / "broken.toml").write_text("[[issuers]\n")
    with pytest.raises(ValueError, match="Expected"):
        load_trusted_issuers(str(tmp_path / "broken.toml"))
