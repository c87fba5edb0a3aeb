"""The reconciler: moves pending deployments to active (or superseded, or failed).

Every replica may run it. Each target (environment + repository + project) is resolved in its
own transaction under a transaction-scoped advisory lock that other replicas skip, and the rows
are locked ``FOR UPDATE SKIP LOCKED``; the decision itself comes from the GitOps truth (which
deployment's pointer the applied revision holds), so two replicas can never disagree.

The applied revision is the GitOps branch head in the embedded default, or, with Argo CD,
the application's ``status.sync.revision`` once it is Synced and Healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import structlog
from prometheus_client import Counter, Histogram

from forge_common.db import Pool, on_commit
from forge_common.events import utcnow

from . import domain, github
from .clients import ArgoCDClient
from .domain import Target
from .gitops import GitOpsRepository
from .store import DeploymentStore, unit_of_work

__all__ = ["Reconciler", "app_name"]

log = structlog.get_logger(__name__)

RECONCILED = Counter("forge_deployment_reconciled_total", "Deployments resolved by the reconciler", ["outcome"])
# Finished deployments (pending -> active or failed), counted once their transaction committed.
DEPLOYMENTS = Counter(
    "forge_deployments_total", "Deployments finished, by environment and status", ["environment", "status"]
)
for _environment in ("dev", "staging", "production"):
    for _status in ("active", "failed"):
        DEPLOYMENTS.labels(_environment, _status)
RECONCILE_SECONDS = Histogram(
    "forge_deployment_reconciliation_seconds",
    "From GitOps commit to active",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)


def app_name(template: str, target: Target) -> str:
    """``{name}`` is :func:`domain.app_name` (injective); the other placeholders are the raw
    parts, for operators whose applications were named before (they can collide)."""
    return template.format(
        name=domain.app_name(target),
        environment=target.environment,
        repository=target.repository.replace("/", "-"),
        project=target.project,
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


class Reconciler:
    def __init__(
        self,
        pool: Pool,
        gitops: GitOpsRepository,
        *,
        interval: float,
        timeout: float,
        argocd: ArgoCDClient | None = None,
        app_template: str = "{name}",
        orphan_grace: float = 60.0,
    ) -> None:
        self.pool = pool
        self.gitops = gitops
        self.argocd = argocd
        self.app_template = app_template
        self.interval = interval
        self.timeout = timeout
        # A pending row without a commit sha for this long is an orphan the reconciler may adopt.
        self.orphan_grace = orphan_grace
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Last thing seen per target, so a timeout can say why it never became active.
        self._observed: dict[str, str] = {}

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deployment-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler.tick_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def tick(self) -> None:
        await self._expire()
        async with unit_of_work(self.pool) as store:
            targets = await store.pending_targets(self._orphaned_before())
        if not targets:
            return
        head: str | None = None
        if self.argocd is None:
            head = await self.gitops.fetch()
            if head is None:
                return
        for target in targets:
            try:
                await self._reconcile(target, head)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler.target_failed", target=target.key)

    async def _expire(self) -> None:
        cutoff = utcnow() - dt.timedelta(seconds=self.timeout)
        expired: set[str] = set()
        async with unit_of_work(self.pool) as store:
            for deployment_id, target in await store.expire_pending(cutoff):
                message = f"not reconciled within {_duration(self.timeout)}"
                if seen := self._observed.get(target.key):
                    message += f"; last seen: {seen}"
                # expire_pending's targets are the rows' own names, as the release gave them.
                failed, event = domain.fail(
                    deployment_id, target.environment, message, target.repository, target.project
                )
                await store.set_error(failed.id, failed.error)
                await store.report_to_github(github.status(failed.id, target, "failure", message))
                await store.record(event)
                RECONCILED.labels("failed").inc()
                on_commit(store.conn, DEPLOYMENTS.labels(failed.environment, "failed").inc)
                expired.add(target.key)
                log.warning("deployment.failed", deployment_id=failed.id, target=target.key, error=message)
        for key in expired:
            self._observed.pop(key, None)

    async def _applied_revision(self, target: Target, head: str | None) -> str | None:
        if self.argocd is None:
            return head
        name = app_name(self.app_template, target)
        app = await self.argocd.application(name)
        self._observed[target.key] = f"Argo CD application {name}: {app.describe()}"
        revision = app.applied_revision
        if revision is None:
            return None
        if not await self.gitops.has_commit(revision):
            await self.gitops.fetch()
            if not await self.gitops.has_commit(revision):
                self._observed[target.key] += " (revision not in the GitOps repository)"
                return None
        return revision

    async def _reconcile(self, target: Target, head: str | None) -> None:
        revision = await self._applied_revision(target, head)
        if revision is None:
            return
        applied = domain.pointer_deployment_id(await self.gitops.read_file(revision, domain.gitops_path(target)))
        async with unit_of_work(self.pool) as store:
            if not await store.lock_target(target):
                return  # another replica is on it
            pending = await store.lock_pending(target, self._orphaned_before())
            if not pending:
                return
            pending = [await self._adopt(store, p, revision, target) if p.id == applied else p for p in pending]
            landed = [
                p.id
                for p in pending
                if p.id != applied
                and p.gitops_commit_sha is not None
                and await self.gitops.is_ancestor(p.gitops_commit_sha, revision)
            ]
            resolution = domain.resolve(pending, applied, landed)
            if resolution.activate is not None:
                await self._activate(store, resolution.activate, target)
            overtaken = await store.overtake(resolution.overtaken, applied)
            reason = f"superseded by deployment {applied}" if applied else "superseded before it was applied"
            await store.report_to_github(*(github.status(d, target, "inactive", reason) for d in overtaken))
        for deployment_id in overtaken:
            RECONCILED.labels("overtaken").inc()
            log.info("deployment.overtaken", deployment_id=deployment_id, by=applied, target=target.key)
        if resolution.activate is not None:
            self._observed.pop(target.key, None)

    def _orphaned_before(self) -> dt.datetime:
        return utcnow() - dt.timedelta(seconds=self.orphan_grace)

    async def _adopt(
        self, store: DeploymentStore, p: domain.PendingDeployment, revision: str, target: Target
    ) -> domain.PendingDeployment:
        """A deployment whose pointer is applied but whose sha was never recorded (its process
        died between the push and the database): take the sha from the GitOps history."""
        if p.gitops_commit_sha is not None:
            return p
        sha = await self.gitops.last_change(revision, domain.gitops_path(target))
        if sha is None:
            return p
        landed = await store.record_commit(p.id, sha)
        if landed is None:  # recorded meanwhile, with its event
            return domain.PendingDeployment(p.id, sha)
        recovered, event = domain.committed(
            p.id, landed.release_id, landed.environment, landed.deployed_by, sha, landed.repository, landed.project
        )
        await store.record(event)
        log.warning("deployment.commit_recovered", deployment_id=p.id, gitops_commit_sha=sha, target=target.key)
        return recovered

    async def _activate(self, store: DeploymentStore, deployment_id: str, target: Target) -> None:
        activated, superseded = await store.activate(deployment_id, target)
        if activated is None:
            return
        await store.report_to_github(
            github.status(deployment_id, target, "success", "active"),
            *(github.status(d, target, "inactive", f"superseded by deployment {deployment_id}") for d in superseded),
        )
        active, event = domain.activate(
            deployment_id,
            activated.environment,
            activated.committed_at or activated.deployed_at,
            activated.reconciled_at,
            activated.repository,
            activated.project,
        )
        await store.record(event)
        RECONCILED.labels("active").inc()
        on_commit(store.conn, DEPLOYMENTS.labels(active.environment, "active").inc)
        RECONCILE_SECONDS.observe(active.reconciliation_seconds)
        log.info("deployment.active", deployment_id=deployment_id, target=target.key, superseded=superseded)
