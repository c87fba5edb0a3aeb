"""The approval rules, without I/O: expiry, separation of duties, revocation, the check."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from forge_approval import domain
from forge_approval.domain import Approval, ReleaseFacts
from forge_common.errors import AuthorizationFailed, Conflict, InvalidRequest

NOW = dt.datetime(2026, 11, 25, 19, 0, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(hours=24)
RELEASE = ReleaseFacts(
    release_id=str(uuid.uuid4()),
    created_by="dev@example.com",
    repository="acme/shop",
    project="api",
    triggered_by="pusher@example.com",
)


def approve(**overrides: object) -> Approval:
    args: dict[str, object] = {
        "release": RELEASE,
        "environment": "production",
        "approver": "boss@example.com",
        "justification": "  CAB-123 signed off  ",
        "now": NOW,
        "ttl": TTL,
        "requested_expiry": None,
    }
    args.update(overrides)
    approval, _ = domain.new_approval(**args)  # type: ignore[arg-type]
    return approval


def test_new_approval_defaults_to_ttl_and_records_the_event() -> None:
    approval, event = domain.new_approval(
        release=RELEASE,
        environment="production",
        approver="boss@example.com",
        justification="  CAB-123 signed off  ",
        now=NOW,
        ttl=TTL,
        requested_expiry=None,
    )
    assert approval.expires_at == NOW + TTL
    assert approval.justification == "CAB-123 signed off"
    assert approval.status_at(NOW) == "active"
    assert event.approval_id == approval.id
    assert event.release_id == RELEASE.release_id
    assert event.environment == "production"
    assert event.approver == "boss@example.com"
    assert event.expires_at == "2026-11-26T19:00:00Z"
    assert (event.repository, event.project) == ("acme/shop", "api")


def test_an_earlier_expiry_may_be_requested() -> None:
    wanted = NOW + dt.timedelta(hours=2)
    assert approve(requested_expiry=wanted).expires_at == wanted
    # exactly the TTL is still allowed
    assert approve(requested_expiry=NOW + TTL).expires_at == NOW + TTL


@pytest.mark.parametrize("offset", [dt.timedelta(0), dt.timedelta(seconds=-1), dt.timedelta(days=-3)])
def test_expiry_not_in_the_future_is_refused(offset: dt.timedelta) -> None:
    with pytest.raises(InvalidRequest, match="not in the future") as err:
        approve(requested_expiry=NOW + offset)
    assert err.value.details["field"] == "expires_at"


def test_expiry_beyond_the_ttl_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="later than approvals may last") as err:
        approve(requested_expiry=NOW + TTL + dt.timedelta(microseconds=1))
    assert err.value.details["latest_allowed"] == "2026-11-26T19:00:00Z"


@pytest.mark.parametrize("creator", ["dev@example.com", "DEV@Example.com ", "pusher@example.com"])
def test_the_release_creator_or_trigger_may_not_approve(creator: str) -> None:
    with pytest.raises(AuthorizationFailed, match="may not approve it") as err:
        approve(approver=creator)
    assert err.value.details["reason"] == "self_approval"


def test_a_release_without_a_trigger_user_is_approvable_by_others() -> None:
    release = ReleaseFacts(
        release_id=RELEASE.release_id, created_by="dev@example.com", repository="acme/shop", project="api"
    )
    assert approve(release=release).approver == "boss@example.com"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_justification_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="justification is required") as err:
        approve(justification=text)
    assert err.value.details == {"field": "justification"}


def test_overlong_justification_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="longer than"):
        approve(justification="x" * (domain.MAX_JUSTIFICATION_LENGTH + 1))


@pytest.mark.parametrize("env", ["prod", "Production", "qa", ""])
def test_unknown_environment_is_refused(env: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        domain.parse_environment(env)
    assert err.value.details["allowed"] == ["dev", "staging", "production"]


def test_status_turns_expired_at_the_instant_expires_at_is_reached() -> None:
    approval = approve(requested_expiry=NOW + dt.timedelta(seconds=2))
    tick = dt.timedelta(microseconds=1)
    assert approval.status_at(approval.expires_at - tick) == "active"
    assert approval.status_at(approval.expires_at) == "expired"
    assert approval.status_at(approval.expires_at + tick) == "expired"


def test_revocation_records_who_when_and_why() -> None:
    approval = approve()
    later = NOW + dt.timedelta(minutes=5)
    revoked, event = domain.revoke(approval, by="sec@example.com", reason="  incident 7  ", now=later)
    assert revoked.status_at(later) == "revoked"
    assert revoked.status_at(NOW + TTL * 2) == "revoked"  # revoked wins over expired
    assert (revoked.revoked_by, revoked.revoked_at, revoked.revocation_reason) == (
        "sec@example.com",
        later,
        "incident 7",
    )
    assert (event.approval_id, event.revoked_by, event.reason) == (approval.id, "sec@example.com", "incident 7")


def test_revocation_without_reason_sends_an_empty_reason() -> None:
    revoked, event = domain.revoke(approve(), by="sec@example.com", reason=None, now=NOW)
    assert revoked.revocation_reason is None
    assert event.reason == ""


def test_revoking_twice_or_after_expiry_conflicts() -> None:
    approval = approve()
    revoked, _ = domain.revoke(approval, by="sec@example.com", reason=None, now=NOW)
    with pytest.raises(Conflict, match="already revoked") as err:
        domain.revoke(revoked, by="sec@example.com", reason=None, now=NOW)
    assert err.value.details["status"] == "revoked"
    with pytest.raises(Conflict, match="already expired"):
        domain.revoke(approval, by="sec@example.com", reason=None, now=approval.expires_at)


def test_check_answers_every_case() -> None:
    approval = approve()
    rid, env = approval.release_id, approval.environment
    assert domain.check(None, rid, env, NOW) == "not_found"
    assert domain.check(approval, rid, env, NOW) == "active"
    assert domain.check(approval, str(uuid.uuid4()), env, NOW) == "mismatch"
    assert domain.check(approval, rid, "staging", NOW) == "mismatch"
    assert domain.check(approval, rid, env, approval.expires_at) == "expired"
    revoked, _ = domain.revoke(approval, by="sec@example.com", reason=None, now=NOW)
    assert domain.check(revoked, rid, env, NOW) == "revoked"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T20:00:00Z", dt.datetime(2026, 11, 25, 20, tzinfo=dt.UTC)),
        ("2026-11-25T21:30:00+01:30", dt.datetime(2026, 11, 25, 20, tzinfo=dt.UTC)),
        ("2026-11-25T20:00:00.250000Z", dt.datetime(2026, 11, 25, 20, 0, 0, 250000, tzinfo=dt.UTC)),
    ],
)
def test_timestamps_are_iso8601_with_an_offset(text: str, expected: dt.datetime) -> None:
    assert domain.parse_timestamp(text, "expires_at") == expected


@pytest.mark.parametrize("text", ["tomorrow", "2026-11-25T20:00:00", "2026-13-01T00:00:00Z", ""])
def test_bad_timestamps_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        domain.parse_timestamp(text, "expires_at")
    assert err.value.details["field"] == "expires_at"


@pytest.mark.parametrize("text", [None, "", "42", "not-a-uuid"])
def test_ids_must_be_uuids(text: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        domain.parse_uuid(text, "release_id")
    assert err.value.details["field"] == "release_id"


STABLE = ReleaseFacts(
    release_id=RELEASE.release_id,
    created_by="dev@example.com",
    repository="acme/shop",
    project="api",
    triggered_by="octocat",
    created_by_id="sub:worker-1",
    triggered_by_id="github:583231",
)


@pytest.mark.parametrize(
    ("subject", "claims"),
    [("worker-1", {}), ("u-9", {"github_id": 583231}), ("u-9", {"github_id": " 583231 "})],
)
def test_stable_identities_decide_self_approval(subject: str, claims: dict[str, object]) -> None:
    approver = domain.Approver.of("boss@example.com", subject, claims, "github_id")
    with pytest.raises(AuthorizationFailed) as err:
        approve(release=STABLE, approver=approver)
    assert err.value.details["reason"] == "self_approval"


@pytest.mark.parametrize(
    ("name", "claims", "claim"),
    [
        ("octocat", {}, "github_id"),  # the login as a name proves nothing
        ("dev@example.com", {"github_id": 1}, "github_id"),  # nor does the creator's email
        ("boss@example.com", {"github_id": 583231}, ""),  # the claim is not configured
        ("boss@example.com", {"github_id": True}, "github_id"),  # not a number
    ],
)
def test_display_names_decide_nothing_when_stable_identities_are_known(
    name: str, claims: dict[str, object], claim: str
) -> None:
    approver = domain.Approver.of(name, "u-9", claims, claim)
    assert approve(release=STABLE, approver=approver).approver == name
