"""Pure rules of releases: validation, identifier classification, alias decisions, OCI content."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from forge_common.errors import Conflict, InvalidRequest, NotFound
from forge_release.domain import (
    AliasRow,
    NewRelease,
    Trigger,
    classify_identifier,
    creation_aliases,
    decide_alias,
    decide_alias_removal,
    validate_alias_name,
)
from forge_release.oci import build_artifact

SHA = "0123456789abcdef0123456789abcdef01234567"
NOW = dt.datetime(2026, 11, 25, 19, 0, 0, 123456, tzinfo=dt.UTC)


def _release(**overrides: object) -> NewRelease:
    args: dict[str, object] = {
        "repository": "Acme/Shop",
        "project": "api",
        "commit_sha": SHA.upper(),
        "pipeline_run_id": None,
        "artifacts": [("img", "container", "ghcr.io/acme/img:1", "https://example.com/img")],
        "trigger": None,
        "created_by": "alice@example.com",
        "now": NOW,
    }
    args.update(overrides)
    return NewRelease.parse(**args)  # type: ignore[arg-type]


def test_parse_normalises_and_defaults_to_manual() -> None:
    r = _release()
    assert r.commit_sha == SHA
    assert r.trigger == Trigger("manual", "alice@example.com")
    assert r.canonical_id == f"Acme/Shop/api/{SHA}"


@pytest.mark.parametrize(
    ("raw", "sha_prefix", "number"),
    [
        (SHA, SHA, None),
        ("ABCDEF0", "abcdef0", None),
        ("1234567", "1234567", 1234567),  # both: SHA first, then number (documented order)
        ("42", None, 42),
        ("042", None, None),  # numbers in canonical form only
        ("v1.2.3", None, None),
        ("abcdef", None, None),  # 6 hex characters are too short for a SHA prefix
    ],
)
def test_classify_identifier(raw: str, sha_prefix: str | None, number: int | None) -> None:
    ident = classify_identifier(raw)
    assert (ident.sha_prefix, ident.number) == (sha_prefix, number)


@pytest.mark.parametrize("name", ["v1.2.3", "main", "feature/login", "api@1.0", "release-2026_11", "_x"])
def test_valid_alias_names(name: str) -> None:
    assert validate_alias_name(name) == name


@pytest.mark.parametrize("name", ["", "42", "deadbeef", "a..b", "a//b", "x/", "x.lock", "-x", "with space", "x" * 129])
def test_invalid_alias_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_alias_name(name)


def _held(alias_type: str, release_id: str = "r1", number: int = 1) -> AliasRow:
    return AliasRow("name", alias_type, release_id, number)  # type: ignore[arg-type]


def test_alias_decisions() -> None:
    assert decide_alias(None, "r2", 2, "tag") == "create"
    assert decide_alias(_held("custom", "r2", 2), "r2", 2, "custom") == "noop"
    assert decide_alias(_held("branch", "r1", 1), "r2", 2, "branch") == "move"
    with pytest.raises(Conflict):
        decide_alias(_held("branch", "r3", 3), "r2", 2, "branch")  # never backwards
    for kind in ("tag", "numeric", "custom"):
        with pytest.raises(Conflict):
            decide_alias(_held(kind), "r2", 2, kind if kind != "numeric" else "custom")
    with pytest.raises(Conflict):
        decide_alias(_held("tag", "r2", 2), "r2", 2, "custom")  # same release, other type
    with pytest.raises(InvalidRequest):
        decide_alias(None, "r2", 2, "numeric")


def test_alias_removal() -> None:
    decide_alias_removal(_held("branch"), "r1", "name")
    decide_alias_removal(_held("custom"), "r1", "name")
    for kind in ("tag", "numeric"):
        with pytest.raises(Conflict):
            decide_alias_removal(_held(kind), "r1", "name")
    with pytest.raises(NotFound):
        decide_alias_removal(_held("custom", "r9"), "r1", "name")
    with pytest.raises(NotFound):
        decide_alias_removal(None, "r1", "name")


def test_creation_aliases() -> None:
    assert creation_aliases(Trigger("manual", "a"), 7) == [("7", "numeric")]
    assert creation_aliases(Trigger("tag", "a", tag="v1"), 7) == [("7", "numeric"), ("v1", "tag")]
    assert creation_aliases(Trigger("branch_push", "a", branch="main"), 7) == [("7", "numeric"), ("main", "branch")]
    # A tag that cannot be an alias (all digits) is recorded on the trigger only.
    assert creation_aliases(Trigger("tag", "a", tag="20261125"), 7) == [("7", "numeric")]


def test_oci_artifact_is_deterministic_and_self_consistent() -> None:
    r = _release()
    a, b = build_artifact(r, 3), build_artifact(r, 3)
    assert a.manifest.data == b.manifest.data
    assert a.digest == "sha256:" + hashlib.sha256(a.manifest.data).hexdigest()
    assert a.repository == "acme/shop/api"
    assert a.tag == SHA
    manifest = json.loads(a.manifest.data)
    assert manifest["config"]["digest"] == a.config.digest
    assert manifest["config"]["size"] == len(a.config.data)
    assert manifest["layers"][0]["digest"] == a.layer.digest
    document = json.loads(a.layer.data)
    assert document["release_number"] == 3
    assert document["created_at"] == "2026-11-25T19:00:00.123456Z"
    assert document["artifacts"] == [
        {
            "name": "img",
            "type": "container",
            "tracking_oci_uri": "ghcr.io/acme/img:1",
            "primary_published_uri": "https://example.com/img",
        }
    ]
    assert build_artifact(r, 4).digest != a.digest
