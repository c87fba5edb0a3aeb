"""Use cases of the deployment service: create a deployment, read the current one and history."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from forge_common import batch, cursor
from forge_common.auth import Principal, require_repository
from forge_common.batch import BatchResult
from forge_common.db import Pool, on_commit
from forge_common.errors import BadGateway, GatewayTimeout, InvalidRequest, LimitExceeded, NotFound
from forge_common.events import utcnow

from . import domain, github
from .clients import ApprovalClient, ReleaseClient
from .domain import NewDeployment, Target
from .gitops import Author, GitError, GitOpsRepository, GitTimeout
from .reconciler import DEPLOYMENTS
from .schemas import CurrentDeployment, DeploymentAccepted, DeploymentHistory, HistoryEntry
from .store import unit_of_work

__all__ = ["CreateDeployment", "DeploymentService", "PromoteDeployments"]

log = structlog.get_logger(__name__)


def _local_failure(exc: Exception) -> str:
    """What a client may be told about a commit that failed inside this service: an OSError's
    reason (``No space left on device (ENOSPC)``) without its paths; for anything else only its
    type (the log has the rest)."""
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
        code = f" ({name})" if name else ""
        return f"the deployment service failed locally: {exc.strerror}{code}"
    return f"the deployment service failed locally: unexpected {type(exc).__name__}; its log has the details"


@dataclass(frozen=True)
class CreateDeployment:
    release_id: str
    environment: str
    approval_id: str | None
    deployed_by: str
    token: str  # the caller's, forwarded to the release and approval services
    # A repository-bound (workload) caller may only deploy its repository's releases.
    principal: Principal | None = None


@dataclass(frozen=True)
class PromoteDeployments:
    """Deploy, per project, the release active in ``source`` to ``target``; ``projects`` None:
    every project of the repository active in ``source``. ``approvals``: release id -> approval id."""

    repository: str
    projects: list[str] | None
    source: str
    target: str
    approvals: dict[str, str]
    deployed_by: str
    token: str
    # A repository-bound (workload) caller may only promote its own repository.
    principal: Principal | None = None


@dataclass
class DeploymentService:
    pool: Pool
    releases: ReleaseClient
    approvals: ApprovalClient
    gitops: GitOpsRepository
    max_pending: int
    on_committed: Callable[[], None] = lambda: None

    async def create(self, cmd: CreateDeployment) -> DeploymentAccepted:
        approval_id = cmd.approval_id
        domain.require_approval_id(cmd.environment, approval_id)
        release = await self.releases.get(cmd.release_id, cmd.token)
        if cmd.principal is not None:
            require_repository(cmd.principal, release.repository)
        if cmd.environment in domain.APPROVAL_REQUIRED_ENVIRONMENTS:
            assert approval_id is not None
            verdict = await self.approvals.check(approval_id, release.id, cmd.environment, cmd.token)
            domain.require_active_approval(verdict, approval_id, release.id, cmd.environment)
        deployment = NewDeployment.create(release, cmd.environment, cmd.deployed_by, approval_id, utcnow())
        async with unit_of_work(self.pool) as store:
            pending = await store.reserve(deployment, self.max_pending)
            if pending is None:
                await store.report_to_github(*github.created(deployment))
        if pending is not None:
            raise LimitExceeded(
                f"{pending} deployments are pending; at most {self.max_pending} may be pending at once",
                {"limit": self.max_pending, "pending": pending},
            )
        # The slot is ours: finish even if the client goes away, or it would stay pending.
        return await asyncio.shield(self._commit(deployment))

    async def promote(self, cmd: PromoteDeployments) -> BatchResult:
        """``POST /v1/deployments/promote``: one ``create`` per project, each with its own checks
        (approval, pending limit) and its own commit; one result per project, in order."""
        if cmd.source == cmd.target:
            raise InvalidRequest("the source and target environments must differ", {"field": "to_environment"})
        if cmd.principal is not None:
            require_repository(cmd.principal, cmd.repository)
        projects = cmd.projects
        if projects is None:
            async with unit_of_work(self.pool) as store:
                projects = await store.active_projects(cmd.source, cmd.repository, batch.MAX_BATCH_ITEMS + 1)
            if not projects:
                raise NotFound(
                    f"nothing of {cmd.repository} is deployed to {cmd.source}",
                    {"environment": cmd.source, "repository": cmd.repository},
                )
        batch.check_size(len(projects), "projects")
        results = []
        for project in projects:
            results.append(await batch.apply(project, 201, functools.partial(self._promote_one, cmd, project)))
        return batch.summarize(results)

    async def _promote_one(self, cmd: PromoteDeployments, project: str) -> DeploymentAccepted:
        active = await self.current(Target(cmd.source, cmd.repository, project))
        return await self.create(
            CreateDeployment(
                release_id=active.release_id,
                environment=cmd.target,
                approval_id=cmd.approvals.get(active.release_id),
                deployed_by=cmd.deployed_by,
                token=cmd.token,
                principal=cmd.principal,
            )
        )

    async def _commit(self, d: NewDeployment) -> DeploymentAccepted:
        try:
            sha = await self.gitops.commit_file(
                d.path, domain.release_pointer(d), domain.commit_message(d), Author.of(d.deployed_by)
            )
        except GitError as exc:
            # Raised only once the commit is given up: a push that lost a race and landed on a
            # retry returns its sha and is never failed, nor is a push that timed out but landed.
            log.error("deployment.gitops_commit_failed", deployment_id=d.id, error=str(exc))
            await self._fail(d, f"GitOps commit failed: {exc}")
            if isinstance(exc, GitTimeout):
                details = {"reason": str(exc), "operation": exc.operation, "remote": exc.remote, "deployment_id": d.id}
                if exc.unconfirmed_commit is not None:
                    details["unconfirmed_commit"] = exc.unconfirmed_commit
                raise GatewayTimeout(f"the GitOps repository did not answer in time: {exc}", details) from exc
            raise BadGateway(
                "the GitOps repository did not accept the commit", {"reason": str(exc), "deployment_id": d.id}
            ) from exc
        except Exception as exc:
            # Anything else (the disk full, the clone unwritable, a bug) fails the deployment now
            # too, rather than leaving it pending (holding a slot) until the reconciler's timeout.
            # Only Exception: a cancellation (shutdown) propagates and leaves the row pending.
            reason = _local_failure(exc)
            log.exception("deployment.gitops_commit_failed", deployment_id=d.id, error=reason)
            await self._fail(d, f"GitOps commit failed: {reason}")
            raise BadGateway(
                f"the GitOps commit failed: {reason}",
                {"reason": reason, "deployment_id": d.id},
            ) from exc
        async with unit_of_work(self.pool) as store:
            if await store.record_commit(d.id, sha) is not None:
                r = d.release
                _, event = domain.committed(d.id, r.id, d.environment, d.deployed_by, sha, r.repository, r.project)
                await store.record(event)
        log.info(
            "deployment.created",
            deployment_id=d.id,
            environment=d.environment,
            repository=d.release.repository,
            project=d.release.project,
            release_number=d.release.release_number,
            gitops_commit_sha=sha,
        )
        self.on_committed()
        return DeploymentAccepted(id=d.id, deployment_id=d.id, gitops_commit_sha=sha, status="pending")

    async def _fail(self, d: NewDeployment, error: str) -> None:
        """Fail the deployment whose commit did not land, announced once."""
        r = d.release
        failed, failure = domain.fail(d.id, d.environment, error, r.repository, r.project)
        async with unit_of_work(self.pool) as store:
            # Only a row still pending fails here, so each failure is announced once: when the
            # reconciler's timeout failed it first, its transaction recorded deployment.failed.
            if await store.mark_failed(failed.id, failed.error):
                await store.report_to_github(github.status(d.id, d.target, "failure", failed.error))
                await store.record(failure)
                on_commit(store.conn, DEPLOYMENTS.labels(failed.environment, "failed").inc)

    async def current(self, target: Target) -> CurrentDeployment:
        async with unit_of_work(self.pool) as store:
            deployment = await store.current(target)
        if deployment is None:
            raise NotFound(
                f"nothing is deployed to {target.environment} for {target.repository} {target.project}",
                {"environment": target.environment, "repository": target.repository, "project": target.project},
            )
        return CurrentDeployment.of(deployment)

    async def history(
        self, target: Target, limit: int, offset: int, page_cursor: str | None = None
    ) -> DeploymentHistory:
        scope = cursor.fingerprint(
            "deployments",
            environment=target.environment,
            repository=target.repository.lower(),
            project=target.project.lower(),
        )
        before = None
        if page_cursor is not None:
            if offset:
                raise InvalidRequest("cursor and offset cannot be combined", {"field": "cursor"})
            key = cursor.decode(page_cursor, scope)
            try:
                before = (dt.datetime.fromisoformat(str(key[0])), str(uuid.UUID(str(key[1]))))
            except (ValueError, IndexError, TypeError):
                raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None
        async with unit_of_work(self.pool) as store:
            rows, total = await store.history(target, limit + 1, offset, before)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = cursor.encode(scope, [rows[-1].deployed_at.isoformat(), rows[-1].id]) if more else None
        return DeploymentHistory(
            deployments=[HistoryEntry.of(r) for r in rows],
            total=total,
            limit=limit,
            offset=offset,
            next_cursor=next_cursor,
        )
