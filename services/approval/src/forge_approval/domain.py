"""The rules of approvals, without I/O.

An approval says: *approver* allows *release* to be deployed to *environment* until
*expires_at*, for a stated reason. Its visible status is a function of the stored status and
the clock: an approval stored ``active`` is ``expired`` from the instant ``expires_at`` is
reached, so no background job is needed for expiry to take effect.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from forge_common.errors import AuthorizationFailed, Conflict, InvalidRequest
from forge_common.events import ApprovalCreated, ApprovalRevoked, isoformat

__all__ = [
    "ENVIRONMENTS",
    "MAX_JUSTIFICATION_LENGTH",
    "MAX_REASON_LENGTH",
    "Approval",
    "ApprovalStatus",
    "Approver",
    "CheckResult",
    "ReleaseFacts",
    "check",
    "decide_expiry",
    "ensure_not_release_creator",
    "new_approval",
    "normalize_reason",
    "parse_environment",
    "parse_justification",
    "parse_timestamp",
    "parse_uuid",
    "revoke",
]

ENVIRONMENTS = ("dev", "staging", "production")
MAX_JUSTIFICATION_LENGTH = 4000
MAX_REASON_LENGTH = 1000

ApprovalStatus = Literal["active", "expired", "revoked"]
CheckResult = Literal["active", "expired", "revoked", "mismatch", "not_found"]


@dataclass(frozen=True)
class ReleaseFacts:
    """What the approval service needs to know about a release (asked of the release service).

    ``*_id`` are stable identities ("sub:<token subject>", "github:<numeric user id>"); None on
    releases that predate them, whose names are compared instead.
    """

    release_id: str
    created_by: str
    # Named by the approval and its events (subscribers filter on ``data.repository``).
    repository: str
    project: str
    triggered_by: str | None = None
    created_by_id: str | None = None
    triggered_by_id: str | None = None


@dataclass(frozen=True)
class Approver:
    """Who approves: the name recorded, and every stable identity the token proves."""

    name: str
    ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, name: str, subject: str, claims: Mapping[str, Any], github_id_claim: str) -> Approver:
        ids = {f"sub:{subject}"}
        github_id = claims.get(github_id_claim) if github_id_claim else None
        # A numeric claim, or its decimal string (identity providers map attributes as strings).
        if isinstance(github_id, int) and not isinstance(github_id, bool):
            ids.add(f"github:{github_id}")
        elif isinstance(github_id, str) and github_id.strip().isdigit():
            ids.add(f"github:{int(github_id.strip())}")
        return cls(name, frozenset(ids))


@dataclass(frozen=True)
class Approval:
    id: str
    release_id: str
    environment: str
    approver: str
    justification: str
    approved_at: dt.datetime
    expires_at: dt.datetime
    stored_status: ApprovalStatus = "active"
    revoked_by: str | None = None
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    # The release's; None on approvals recorded before migration 0002 stored them.
    repository: str | None = None
    project: str | None = None

    def status_at(self, now: dt.datetime) -> ApprovalStatus:
        """Revoked wins; otherwise an approval is active strictly before ``expires_at``."""
        if self.stored_status == "revoked":
            return "revoked"
        if self.stored_status == "expired" or now >= self.expires_at:
            return "expired"
        return "active"


def parse_uuid(value: str | None, field: str) -> str:
    if value is None or value == "":
        raise InvalidRequest(f"{field} is required", {"field": field})
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(f"{field} must be a UUID, got {value!r}", {"field": field}) from None


def parse_environment(value: str | None, field: str = "environment") -> str:
    if value is None or value == "":
        raise InvalidRequest(f"{field} is required", {"field": field, "allowed": list(ENVIRONMENTS)})
    if value not in ENVIRONMENTS:
        raise InvalidRequest(
            f"{field} must be one of {', '.join(ENVIRONMENTS)}, got {value!r}",
            {"field": field, "allowed": list(ENVIRONMENTS)},
        )
    return value


def parse_timestamp(value: str, field: str) -> dt.datetime:
    """An ISO-8601 timestamp with an explicit offset (``Z`` or ``+hh:mm``), as UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"{field} must be an ISO-8601 timestamp such as 2026-11-25T19:00:00Z, got {value!r}", {"field": field}
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidRequest(f"{field} must carry a UTC offset (e.g. a trailing Z), got {value!r}", {"field": field})
    return parsed.astimezone(dt.UTC)


def parse_justification(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise InvalidRequest("justification is required and may not be blank", {"field": "justification"})
    if len(stripped) > MAX_JUSTIFICATION_LENGTH:
        raise InvalidRequest(
            f"justification is longer than {MAX_JUSTIFICATION_LENGTH} characters",
            {"field": "justification", "max_length": MAX_JUSTIFICATION_LENGTH},
        )
    return stripped


def decide_expiry(now: dt.datetime, ttl: dt.timedelta, requested: dt.datetime | None) -> dt.datetime:
    """The default is ``now + ttl``; an approver may ask for an earlier expiry, never a later one."""
    latest = now + ttl
    if requested is None:
        return latest
    if requested <= now:
        raise InvalidRequest(
            f"expires_at {isoformat(requested)} is not in the future",
            {"field": "expires_at", "now": isoformat(now)},
        )
    if requested > latest:
        raise InvalidRequest(
            f"expires_at {isoformat(requested)} is later than approvals may last "
            f"({int(ttl.total_seconds())} s from now, until {isoformat(latest)})",
            {"field": "expires_at", "latest_allowed": isoformat(latest), "ttl_seconds": ttl.total_seconds()},
        )
    return requested


def _same_identity(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return a.strip().casefold() == b.strip().casefold()


def _is(approver: Approver, name: str | None, stable_id: str | None) -> bool:
    """Stable identities decide when the release recorded one; names only for older releases."""
    if stable_id:
        return stable_id in approver.ids
    return _same_identity(approver.name, name)


def ensure_not_release_creator(approver: str | Approver, release: ReleaseFacts) -> None:
    """Separation of duties: whoever created (or triggered) a release may not approve it."""
    who = approver if isinstance(approver, Approver) else Approver(approver)
    if _is(who, release.created_by, release.created_by_id) or _is(who, release.triggered_by, release.triggered_by_id):
        raise AuthorizationFailed(
            f"{who.name} created release {release.release_id} and may not approve it; "
            "another approver must approve this release",
            {"reason": "self_approval", "release_id": release.release_id, "approver": who.name},
        )


def new_approval(
    *,
    release: ReleaseFacts,
    environment: str,
    approver: str | Approver,
    justification: str,
    now: dt.datetime,
    ttl: dt.timedelta,
    requested_expiry: dt.datetime | None,
) -> tuple[Approval, ApprovalCreated]:
    ensure_not_release_creator(approver, release)
    approval = Approval(
        id=str(uuid.uuid4()),
        release_id=release.release_id,
        environment=parse_environment(environment),
        approver=approver.name if isinstance(approver, Approver) else approver,
        justification=parse_justification(justification),
        approved_at=now,
        expires_at=decide_expiry(now, ttl, requested_expiry),
        repository=release.repository,
        project=release.project,
    )
    event = ApprovalCreated(
        approval_id=approval.id,
        release_id=approval.release_id,
        environment=approval.environment,
        approver=approval.approver,
        expires_at=isoformat(approval.expires_at),
        repository=release.repository,
        project=release.project,
    )
    return approval, event


def normalize_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    stripped = reason.strip()
    if len(stripped) > MAX_REASON_LENGTH:
        raise InvalidRequest(
            f"reason is longer than {MAX_REASON_LENGTH} characters",
            {"field": "reason", "max_length": MAX_REASON_LENGTH},
        )
    return stripped or None


def revoke(approval: Approval, *, by: str, reason: str | None, now: dt.datetime) -> tuple[Approval, ApprovalRevoked]:
    """Only an approval that is active right now can be revoked."""
    status = approval.status_at(now)
    if status != "active":
        details: dict[str, object] = {"approval_id": approval.id, "status": status}
        if status == "revoked" and approval.revoked_at is not None:
            details["revoked_at"] = isoformat(approval.revoked_at)
            details["revoked_by"] = approval.revoked_by
        else:
            details["expires_at"] = isoformat(approval.expires_at)
        raise Conflict(f"approval {approval.id} is already {status} and cannot be revoked", details)
    revoked = replace(
        approval,
        stored_status="revoked",
        revoked_by=by,
        revoked_at=now,
        revocation_reason=normalize_reason(reason),
    )
    event = ApprovalRevoked(
        approval_id=approval.id,
        release_id=approval.release_id,
        environment=approval.environment,
        revoked_by=by,
        reason=revoked.revocation_reason or "",
        repository=approval.repository,
        project=approval.project,
    )
    return revoked, event


def check(approval: Approval | None, release_id: str, environment: str, now: dt.datetime) -> CheckResult:
    """Is this approval, right now, an active approval of ``release_id`` for ``environment``?"""
    if approval is None:
        return "not_found"
    if approval.release_id != release_id or approval.environment != environment:
        return "mismatch"
    return approval.status_at(now)
