"""Pure deployment rules: approvals, the ReleasePointer, and resolving pending deployments."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import pytest
import yaml

from forge_common.errors import AuthorizationFailed, InvalidRequest
from forge_deployment import domain
from forge_deployment.domain import NewDeployment, PendingDeployment, Release, Target

RELEASE = Release(
    id="5b0c1c9e-8a4e-4a4e-9d55-0a4b3f1f2c10",
    repository="acme/shop",
    project="api",
    commit_sha="0123456789abcdef0123456789abcdef01234567",
    release_number=42,
    oci_uri="oci://registry.local/acme/shop/api:42",
    aliases=("42", 'v1.2.3: "quoted"'),
)
NOW = dt.datetime(2026, 11, 25, 19, 0, 0, 123456, tzinfo=dt.UTC)


def _deployment(
    environment: str = "production", approval: str | None = "a1b2c3d4-0000-4000-8000-000000000001"
) -> NewDeployment:
    return NewDeployment.create(RELEASE, environment, "alice@acme.io", approval, NOW)


def test_production_requires_an_approval_id() -> None:
    with pytest.raises(InvalidRequest) as err:
        domain.require_approval_id("production", None)
    assert err.value.details["field"] == "approval_id"
    domain.require_approval_id("dev", None)
    domain.require_approval_id("staging", None)
    domain.require_approval_id("production", "x")


@pytest.mark.parametrize(
    ("verdict", "words"),
    [("expired", "expired"), ("revoked", "revoked"), ("mismatch", "not for release"), ("not_found", "does not exist")],
)
def test_an_approval_that_is_not_active_is_refused_with_its_reason(verdict: str, words: str) -> None:
    with pytest.raises(AuthorizationFailed) as err:
        domain.require_active_approval(verdict, "ap-1", RELEASE.id, "production")
    assert err.value.details["reason"] == verdict
    assert words in err.value.message
    domain.require_active_approval("active", "ap-1", RELEASE.id, "production")


def test_only_environments_that_need_an_approval_record_one() -> None:
    assert _deployment("production").approval_id is not None
    assert _deployment("dev").approval_id is None


def test_gitops_path_has_one_directory_per_part() -> None:
    assert domain.gitops_path(Target("dev", "acme/shop", "api")) == "environments/dev/acme/shop/api/release.yaml"


def test_gitops_paths_and_app_names_of_the_colliding_pair_differ() -> None:
    """The old layout mapped both of these to environments/production/acme/web-api-gateway/."""
    a, b = Target("production", "acme/web", "api-gateway"), Target("production", "acme/web-api", "gateway")
    assert domain.gitops_path(a) == "environments/production/acme/web/api-gateway/release.yaml"
    assert domain.gitops_path(b) == "environments/production/acme/web-api/gateway/release.yaml"
    assert domain.app_name(a) != domain.app_name(b)
    assert domain.legacy_gitops_path(a) == domain.legacy_gitops_path(b)  # the bug, for the record


def test_names_differing_only_by_case_are_one_target() -> None:
    a, b = Target("dev", "Acme/Shop", "API"), Target("dev", "acme/shop", "api")
    assert domain.gitops_path(a) == domain.gitops_path(b)
    assert domain.app_name(a) == domain.app_name(b)
    assert a.key == b.key


# Parts built to confuse a naive encoding: separators, escapes and what they could stand for.
_PARTS = ["a", "b", "ab", "a-b", "a.b", "a_b", "a--b", "a-hb", "a-h", "h", "hb", "d", "web", "web-api", "api", "Web"]


def test_app_names_and_paths_are_injective_and_valid_kubernetes_names() -> None:
    names: dict[str, str] = {}
    paths: dict[str, str] = {}
    for env, owner, name, project in itertools.product(domain.ENVIRONMENTS, _PARTS, _PARTS, _PARTS):
        target = Target(env, f"{owner}/{name}", project)
        app = domain.app_name(target)
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", app), app
        assert names.setdefault(app, target.key) == target.key, (app, target)
        assert paths.setdefault(domain.gitops_path(target), target.key) == target.key, target
    assert len(names) == len(paths) == 3 * 15**3  # "Web" is "web"


def test_long_app_names_are_cut_with_a_hash() -> None:
    long = Target("production", f"{'o' * 39}/{'n' * 100}", "p" * 100)
    other = Target("production", f"{'o' * 39}/{'n' * 100}", "p" * 99)
    assert len(domain.app_name(long)) == 63
    assert domain.app_name(long) != domain.app_name(other)
    assert domain.app_name(long).startswith("production--oooo")


@pytest.mark.parametrize(("repository", "project"), [("acme/shop", "a/b"), ("acme/shop", ".."), ("mono", "web")])
def test_a_part_that_is_not_one_path_component_is_refused(repository: str, project: str) -> None:
    with pytest.raises(InvalidRequest):
        domain.gitops_path(Target("dev", repository, project))


def test_release_pointer_is_valid_yaml_with_everything_a_target_needs() -> None:
    d = _deployment()
    doc = yaml.safe_load(domain.release_pointer(d))
    assert doc["apiVersion"] == "forge.dev/v1"
    assert doc["kind"] == "ReleasePointer"
    assert doc["metadata"]["name"] == domain.app_name(d.target) == "production--acme--shop--api"
    annotations = doc["metadata"]["annotations"]
    assert annotations["forge.dev/repository"] == "acme/shop"
    assert annotations["forge.dev/project"] == "api"
    assert annotations["forge.dev/environment"] == "production"
    assert annotations["forge.dev/deployment-id"] == d.id
    assert annotations["forge.dev/release-id"] == RELEASE.id
    assert annotations["forge.dev/approval-id"] == d.approval_id
    assert doc["spec"] == {
        "release": RELEASE.commit_sha,
        "releaseNumber": 42,
        "aliases": ["42", 'v1.2.3: "quoted"'],
        "ociUri": RELEASE.oci_uri,
        "deployedBy": "alice@acme.io",
        "deployedAt": "2026-11-25T19:00:00.123456Z",
    }
    assert domain.pointer_deployment_id(domain.release_pointer(d)) == d.id
    assert domain.pointer_deployment_id(b"kind: Something\n") is None
    assert domain.pointer_deployment_id(None) is None


def test_commit_message_says_what_was_deployed_where() -> None:
    message = domain.commit_message(_deployment("production"))
    subject = message.splitlines()[0]
    assert subject == "Deploy acme/shop api release 42 (0123456789ab) to production"
    assert "Forge-Deployed-By: alice@acme.io" in message


def test_resolve_activates_the_applied_one_and_supersedes_the_overtaken() -> None:
    pending = [PendingDeployment("d1", "c1"), PendingDeployment("d2", "c2"), PendingDeployment("d3", "c3")]
    result = domain.resolve(pending, "d2", landed=["d1"])
    assert result.activate == "d2"
    assert result.overtaken == ["d1"]  # d3 has not been applied yet: it waits


def test_resolve_does_nothing_without_an_applied_pointer() -> None:
    assert domain.resolve([PendingDeployment("d1", "c1")], None, ["d1"]).empty
    # The applied pointer belongs to a deployment no longer pending: only the overtaken move.
    result = domain.resolve([PendingDeployment("d1", "c1")], "d0", ["d1"])
    assert result.activate is None
    assert result.overtaken == ["d1"]


# --- transitions return (state, event) -------------------------------------------------------


def test_committed_keeps_the_deployment_pending_with_its_commit_and_says_so() -> None:
    d = _deployment()
    state, event = domain.committed(d.id, d.release.id, d.environment, d.deployed_by, "c" * 40, "acme/shop", "api")
    assert state == PendingDeployment(d.id, "c" * 40)
    assert (event.deployment_id, event.release_id, event.environment, event.deployed_by, event.gitops_commit_sha) == (
        d.id,
        RELEASE.id,
        "production",
        d.deployed_by,
        "c" * 40,
    )
    assert (event.repository, event.project) == ("acme/shop", "api")


def test_fail_carries_the_message_in_state_and_event() -> None:
    state, event = domain.fail("d1", "staging", "not reconciled within 10m", "acme/shop", "api")
    assert (state.id, state.environment, state.error) == ("d1", "staging", "not reconciled within 10m")
    assert (event.deployment_id, event.status, event.error_message) == ("d1", "failed", "not reconciled within 10m")
    assert (event.repository, event.project) == ("acme/shop", "api")


@pytest.mark.parametrize(
    ("started", "reconciled", "seconds"),
    [
        (NOW, NOW + dt.timedelta(seconds=90.4), 90),
        (NOW, NOW, 0),
        # A clock step backwards never yields a negative duration.
        (NOW, NOW - dt.timedelta(seconds=5), 0),
    ],
)
def test_activate_measures_reconciliation_from_the_commit(
    started: dt.datetime, reconciled: dt.datetime, seconds: int
) -> None:
    state, event = domain.activate("d1", "dev", started, reconciled, "acme/shop", "api")
    assert state.environment == "dev"
    assert round(state.reconciliation_seconds) == seconds
    assert (event.deployment_id, event.status, event.reconciliation_duration_seconds) == ("d1", "active", seconds)
