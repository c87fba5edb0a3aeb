"""Use cases of the approval service; reached from HTTP (api.py)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter

from forge_common import batch
from forge_common.auth import Principal
from forge_common.batch import BatchResult
from forge_common.errors import Conflict, NotFound
from forge_common.events import isoformat, utcnow

from . import domain
from .domain import Approval, ApprovalStatus, CheckResult
from .releases import Releases
from .schemas import ApprovalCreated
from .store import UnitOfWork

__all__ = ["ApprovalService", "CheckAnswer", "CreateApproval", "RevokeApproval"]

log = structlog.get_logger(__name__)

# Counted after the transaction committed; `approved` = created.
APPROVALS = Counter("forge_approvals_total", "Approvals created and revoked", ["action"])
APPROVALS.labels("approved")
APPROVALS.labels("revoked")


@dataclass(frozen=True)
class CreateApproval:
    release_id: str
    environment: str
    justification: str
    approver: str
    token: str  # forwarded to the release service
    expires_at: str | None = None
    # The approver's token subject and claims: their stable identities (see domain.Approver).
    approver_subject: str = ""
    approver_claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RevokeApproval:
    approval_id: str
    revoked_by: str
    reason: str | None = None


@dataclass(frozen=True)
class CheckAnswer:
    result: CheckResult
    approval_id: str
    expires_at: dt.datetime | None
    checked_at: dt.datetime


class ApprovalService:
    def __init__(
        self,
        uow: UnitOfWork,
        releases: Releases,
        ttl_seconds: float,
        clock: Callable[[], dt.datetime] = utcnow,
        github_id_claim: str = "github_id",
    ) -> None:
        self.uow = uow
        self.github_id_claim = github_id_claim
        self.releases = releases
        self.ttl = dt.timedelta(seconds=ttl_seconds)
        self.clock = clock

    async def create(self, cmd: CreateApproval) -> tuple[Approval, ApprovalStatus]:
        release_id = domain.parse_uuid(cmd.release_id, "release_id")
        environment = domain.parse_environment(cmd.environment)
        requested = domain.parse_timestamp(cmd.expires_at, "expires_at") if cmd.expires_at is not None else None
        # Bad input fails before any I/O (the expiry is decided again, at the write's instant).
        domain.parse_justification(cmd.justification)
        if requested is not None:
            domain.decide_expiry(self.clock(), self.ttl, requested)
        release = await self.releases.facts(release_id, cmd.token)
        now = self.clock()
        approval, event = domain.new_approval(
            release=release,
            environment=environment,
            approver=domain.Approver.of(cmd.approver, cmd.approver_subject, cmd.approver_claims, self.github_id_claim)
            if cmd.approver_subject
            else cmd.approver,
            justification=cmd.justification,
            now=now,
            ttl=self.ttl,
            requested_expiry=requested,
        )
        async with self.uow.begin() as tx:
            await tx.approvals.expire_lapsed(release_id, environment, now)
            if not await tx.approvals.insert_if_none_active(approval):
                existing = await tx.approvals.active(release_id, environment)
                details: dict[str, object] = {"release_id": release_id, "environment": environment}
                if existing is not None:
                    details |= {
                        "existing_approval_id": existing.id,
                        "approver": existing.approver,
                        "expires_at": isoformat(existing.expires_at),
                    }
                raise Conflict(
                    f"release {release_id} already has an active approval for {environment}; "
                    "revoke it or wait until it expires",
                    details,
                )
            await tx.record(event)
        APPROVALS.labels("approved").inc()
        log.info("approval.created", approval_id=approval.id, release_id=release_id, environment=environment)
        return approval, approval.status_at(self.clock())

    async def create_many(self, commands: list[CreateApproval]) -> BatchResult:
        """``POST /v1/approvals/batch``: ``create`` per release, each in its own transaction."""
        results = [await batch.apply(cmd.release_id, 201, functools.partial(self._created, cmd)) for cmd in commands]
        return batch.summarize(results)

    async def _created(self, cmd: CreateApproval) -> ApprovalCreated:
        approval, status = await self.create(cmd)
        return ApprovalCreated.of(approval, status)

    async def require_release_access(self, release_id: str, principal: Principal) -> None:
        """A repository-bound (workload) token sees approvals of its repository's releases only:
        the release service, asked with that token, refuses (403) a release of another one."""
        if principal.repository is not None:
            await self.releases.facts(domain.parse_uuid(release_id, "release_id"), principal.token)

    async def current(self, release_id: str, environment: str) -> tuple[Approval, ApprovalStatus]:
        rid = domain.parse_uuid(release_id, "release_id")
        env = domain.parse_environment(environment)
        async with self.uow.read() as approvals:
            approval = await approvals.current(rid, env)
        if approval is None:
            raise NotFound(f"release {rid} has no approval for {env}", {"release_id": rid, "environment": env})
        return approval, approval.status_at(self.clock())

    async def get(self, approval_id: str) -> tuple[Approval, ApprovalStatus]:
        aid = domain.parse_uuid(approval_id, "approval_id")
        async with self.uow.read() as approvals:
            approval = await approvals.get(aid)
        if approval is None:
            raise NotFound(f"approval {aid} does not exist", {"approval_id": aid})
        return approval, approval.status_at(self.clock())

    async def revoke(self, cmd: RevokeApproval) -> tuple[Approval, ApprovalStatus]:
        approval_id = domain.parse_uuid(cmd.approval_id, "approval_id")
        reason = domain.normalize_reason(cmd.reason)
        async with self.uow.begin() as tx:
            approval = await tx.approvals.get(approval_id, for_update=True)
            if approval is None:
                raise NotFound(f"approval {approval_id} does not exist", {"approval_id": approval_id})
            revoked, event = domain.revoke(approval, by=cmd.revoked_by, reason=reason, now=self.clock())
            await tx.approvals.save_revocation(revoked)
            await tx.record(event)
        APPROVALS.labels("revoked").inc()
        log.info("approval.revoked", approval_id=approval_id, revoked_by=cmd.revoked_by)
        return revoked, "revoked"

    async def check(self, approval_id: str | None, release_id: str | None, environment: str | None) -> CheckAnswer:
        aid = domain.parse_uuid(approval_id, "approval_id")
        rid = domain.parse_uuid(release_id, "release_id")
        env = domain.parse_environment(environment)
        async with self.uow.read() as approvals:
            approval = await approvals.get(aid)
        now = self.clock()
        result = domain.check(approval, rid, env, now)
        return CheckAnswer(
            result=result,
            approval_id=aid,
            expires_at=approval.expires_at if approval is not None else None,
            checked_at=now,
        )
