"""Typed settings of the deployment service (``FORGE_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from forge_common.settings import CommonSettings

__all__ = ["Settings"]


class Settings(CommonSettings, kw_only=True):
    """Settings of the deployment service (FORGE_* environment variables)."""

    # Where the embedded defaults keep their files (the GitOps repository, per-process clones).
    data_dir: str = ".forge-data"
    # The release service (contract #1: GET /v1/releases/{release_uuid}).
    release_url: str = "http://127.0.0.1:8082"
    # The approval service (contract #3: GET /v1/approvals/check).
    approval_url: str = "http://127.0.0.1:8084"
    # Upper bound of one call to the release or approval service (a Go duration).
    service_timeout: float = 10.0
    # The GitOps repository the release pointers are committed to. Any URL the git CLI can push
    # to; empty means the embedded default, a bare repository at {data_dir}/gitops.git (created
    # when missing, as is any missing file:// repository).
    gitops_url: str = ""
    gitops_branch: str = "main"
    # Where this process keeps its private bare clone; empty: a fresh directory under data_dir.
    gitops_workdir: str = ""
    # How many times a push rejected because another writer moved the branch is re-applied.
    gitops_push_attempts: int = 50
    # Upper bound of one git operation on the GitOps repository (a fetch, a push; a Go duration):
    # a stalled remote fails that deployment (504) instead of holding the commit lock.
    gitops_timeout: float = 30.0
    # Upper bound of landing one commit, waiting for the lock and lost races included.
    gitops_commit_timeout: float = 60.0
    gitops_committer_name: str = "Forge Deployment"
    gitops_committer_email: str = "deployment@forge.invalid"
    # Argo CD: when set, a deployment is active once the application has synced its commit and
    # is Healthy; when empty, once its commit is on the GitOps branch.
    argocd_url: str = ""
    argocd_token: str = ""
    # Application name per target: {name} is the collision-free name (see the README); the raw
    # {environment}, {repository} (slashes become "-") and {project} are kept for existing setups.
    argocd_app_template: str = "{name}"
    # Run the reconciler in this process (every replica may; they share work safely).
    reconciler_enabled: bool = True
    # How often the reconciler looks at pending deployments (a Go duration).
    reconcile_interval: float = 2.0
    # A deployment not reconciled within this time becomes failed (a Go duration).
    reconcile_timeout: float = 600.0
    # A pending deployment without a recorded commit for this long is looked up in the GitOps
    # history (its process died between the push and the database) (a Go duration).
    reconcile_orphan_grace: float = 60.0
    # Pending deployments allowed at once across all environments (the spec's 50).
    max_pending_deployments: int = 50

    def validate(self) -> list[str]:
        problems = super().validate()
        for name in ("release_url", "approval_url"):
            if not getattr(self, name).startswith(("http://", "https://")):
                problems.append(f"FORGE_{name.upper()} must be an http:// or https:// URL")
        if self.argocd_url and not self.argocd_url.startswith(("http://", "https://")):
            problems.append("FORGE_ARGOCD_URL must be an http:// or https:// URL")
        for name in (
            "service_timeout",
            "gitops_timeout",
            "gitops_commit_timeout",
            "reconcile_interval",
            "reconcile_timeout",
            "reconcile_orphan_grace",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"FORGE_{name.upper()} must be a positive duration")
        if self.max_pending_deployments < 1:
            problems.append("FORGE_MAX_PENDING_DEPLOYMENTS must be >= 1")
        if self.gitops_push_attempts < 1:
            problems.append("FORGE_GITOPS_PUSH_ATTEMPTS must be >= 1")
        if not self.gitops_branch or " " in self.gitops_branch:
            problems.append("FORGE_GITOPS_BRANCH must be a branch name")
        try:
            self.argocd_app_template.format(name="n", environment="dev", repository="r", project="p")
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"FORGE_ARGOCD_APP_TEMPLATE: unknown placeholder {exc}")
        return problems

    @property
    def gitops_remote(self) -> str:
        return self.gitops_url or (Path(self.data_dir).resolve() / "gitops.git").as_uri()
