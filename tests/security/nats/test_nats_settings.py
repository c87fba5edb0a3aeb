"""NATS credentials settings and the permission model's shape (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_common import nats_auth
from forge_common.settings import CommonSettings, SettingsError, load


def test_a_password_without_a_user_is_refused_at_start() -> None:
    with pytest.raises(SettingsError) as caught:
        load(CommonSettings, {"FORGE_NATS_PASSWORD": "secret"})
    assert "FORGE_NATS_PASSWORD is set without FORGE_NATS_USER" in caught.value.problems


def test_a_missing_creds_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load(CommonSettings, {"FORGE_NATS_CREDS": str(tmp_path / "forge.creds")})
    assert any("FORGE_NATS_CREDS" in p and "no such file" in p for p in caught.value.problems)


def test_connect_options_carry_the_identity_and_its_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "worker.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    settings = load(
        CommonSettings,
        {"FORGE_NATS_USER": "worker", "FORGE_NATS_PASSWORD": "pw", "FORGE_NATS_CREDS": str(creds)},
    )
    options = nats_auth.connect_options("worker", settings.nats_user, settings.nats_password, settings.nats_creds)
    assert options == {
        "inbox_prefix": "_INBOX_WORKER",
        "user": "worker",
        "password": "pw",
        "user_credentials": str(creds),
    }
    # Nothing set: anonymous, only the identity's own inbox prefix.
    assert nats_auth.connect_options("release") == {"inbox_prefix": "_INBOX_RELEASE"}


def test_permissions_follow_the_deployment_prefix() -> None:
    worker = nats_auth.permissions("worker", "t1")
    assert worker is not None
    assert "t1._INBOX.forge.>" in worker["publish"]["allow"]
    assert "$JS.API.CONSUMER.MSG.NEXT.T1_PIPELINE_JOBS.*" in worker["publish"]["allow"]
    assert not any("events" in subject for subject in worker["publish"]["allow"])
    events = nats_auth.permissions("events", "t1")
    assert events is not None
    assert all("FORGE_EVENTS" in s or s in ("$JS.API.INFO", "$JS.API.STREAM.NAMES") for s in events["publish"]["allow"])
    assert "t1._INBOX.forge.>" in events["subscribe"]["deny"]
    assert nats_auth.permissions("admin") is None
    with pytest.raises(ValueError, match="unknown NATS identity"):
        nats_auth.permissions("gateway")


def test_only_the_pipeline_publishes_jobs_and_only_services_publish_events() -> None:
    for identity in nats_auth.IDENTITIES:
        perms = nats_auth.permissions(identity)
        if perms is None:
            continue
        publish = perms["publish"]["allow"]
        assert ("pipeline.>" in publish) == (identity == "pipeline")
        assert ("events.>" in publish) == (identity in nats_auth.PUBLISHERS)
