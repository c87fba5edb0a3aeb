"""Wiring of the deployment service: the only place its parts are put together."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from litestar import Litestar

from forge_common.github import GitHubSender
from forge_common.http import AppSpec, build_app
from forge_common.runtime import Runtime

from .api import ROUTES
from .clients import ApprovalClient, ArgoCDClient, ReleaseClient
from .gitops import Author, GitOpsRepository, local_path
from .reconciler import Reconciler
from .service import DeploymentService
from .settings import Settings

__all__ = ["create_app"]


def _workdir(settings: Settings) -> tuple[Path, bool]:
    """This process's private clone: the configured one (kept), or a fresh one (removed at exit)."""
    if settings.gitops_workdir:
        return Path(settings.gitops_workdir), False
    base = Path(settings.data_dir).resolve() / "deployment"
    if local_path(settings.gitops_remote) is not None:
        return base / "unused", False  # a local repository is written directly: no clone
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"gitops-{os.getpid()}-", dir=base)), True


# Over 60 lines on purpose: the one place the service is put together; its start and stop hooks
# are closures over the settings and what they build, read side by side.
def create_app(settings: Settings) -> Litestar:
    async def start(runtime: Runtime) -> None:
        workdir, remove = _workdir(settings)
        gitops = GitOpsRepository(
            settings.gitops_remote,
            settings.gitops_branch,
            workdir,
            Author(settings.gitops_committer_name, settings.gitops_committer_email),
            push_attempts=settings.gitops_push_attempts,
            remove_workdir=remove,
            timeout=settings.gitops_timeout,
            commit_timeout=settings.gitops_commit_timeout,
        )
        await gitops.open()
        releases = ReleaseClient(settings.release_url, settings.service_timeout)
        approvals = ApprovalClient(settings.approval_url, settings.service_timeout)
        service = DeploymentService(runtime.pool, releases, approvals, gitops, settings.max_pending_deployments)
        # GitHub deployments and their statuses, from the GitHub outbox (forge_common.github).
        sender = GitHubSender(runtime.pool, "deployment", "deployment", settings.github_config("deployment"))
        sender.start()
        runtime.extras.update(
            gitops=gitops, releases=releases, approvals=approvals, deployments=service, github_sender=sender
        )
        if settings.reconciler_enabled:
            argocd = ArgoCDClient(settings.argocd_url, settings.argocd_token) if settings.argocd_url else None
            reconciler = Reconciler(
                runtime.pool,
                gitops,
                interval=settings.reconcile_interval,
                timeout=settings.reconcile_timeout,
                argocd=argocd,
                app_template=settings.argocd_app_template,
                orphan_grace=settings.reconcile_orphan_grace,
            )
            service.on_committed = reconciler.wake
            runtime.extras.update(reconciler=reconciler, argocd=argocd)
            reconciler.start()

    async def stop(runtime: Runtime) -> None:
        reconciler: Reconciler | None = runtime.extras.get("reconciler")
        if reconciler is not None:
            await reconciler.stop()
        sender: GitHubSender | None = runtime.extras.get("github_sender")
        if sender is not None:
            await sender.stop()
        argocd: ArgoCDClient | None = runtime.extras.get("argocd")
        if argocd is not None:
            await argocd.close()
        for name in ("releases", "approvals"):
            client = runtime.extras.get(name)
            if client is not None:
                await client.close()
        gitops: GitOpsRepository | None = runtime.extras.get("gitops")
        if gitops is not None:
            await gitops.close()

    return build_app(
        AppSpec(
            service="deployment",
            settings=settings,
            routes=ROUTES,
            schema="deployment",
            migrations="forge_deployment.migrations",
            on_startup=[start],
            on_shutdown=[stop],
            description="Deploys releases to environments through GitOps commits and reconciles them.",
        )
    )
