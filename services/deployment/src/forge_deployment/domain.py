"""Pure rules of deployments: what may be deployed, what the GitOps repository holds, and how
a pending deployment is resolved once the target has applied a revision. No I/O here."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from forge_common.errors import AuthorizationFailed, InvalidRequest
from forge_common.events import isoformat

__all__ = [
    "APPROVAL_REQUIRED_ENVIRONMENTS",
    "ENVIRONMENTS",
    "ApprovalVerdict",
    "NewDeployment",
    "PendingDeployment",
    "Release",
    "Resolution",
    "Target",
    "commit_message",
    "gitops_path",
    "pointer_deployment_id",
    "release_pointer",
    "require_active_approval",
    "require_approval_id",
    "resolve",
]

Environment = Literal["dev", "staging", "production"]
Status = Literal["pending", "active", "superseded", "failed"]
ENVIRONMENTS: tuple[str, ...] = ("dev", "staging", "production")
APPROVAL_REQUIRED_ENVIRONMENTS = frozenset({"production"})
POINTER_API_VERSION = "forge.dev/v1"
POINTER_KIND = "ReleasePointer"


@dataclass(frozen=True)
class Target:
    """Where a release runs: one project of one repository in one environment."""

    environment: str
    repository: str
    project: str

    @property
    def key(self) -> str:
        return f"{self.environment}/{self.repository}/{self.project}"


@dataclass(frozen=True)
class Release:
    """What the deployment service needs to know of a release (from the release service)."""

    id: str
    repository: str
    project: str
    commit_sha: str
    release_number: int
    oci_uri: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class NewDeployment:
    id: str
    release: Release
    environment: str
    deployed_by: str
    deployed_at: dt.datetime
    approval_id: str | None

    @classmethod
    def create(
        cls, release: Release, environment: str, deployed_by: str, approval_id: str | None, now: dt.datetime
    ) -> NewDeployment:
        return cls(
            id=str(uuid.uuid4()),
            release=release,
            environment=environment,
            deployed_by=deployed_by,
            deployed_at=now,
            # Only environments that need an approval record one: it was checked for them.
            approval_id=approval_id if environment in APPROVAL_REQUIRED_ENVIRONMENTS else None,
        )

    @property
    def target(self) -> Target:
        return Target(self.environment, self.release.repository, self.release.project)

    @property
    def path(self) -> str:
        return gitops_path(self.target)


def require_approval_id(environment: str, approval_id: str | None) -> None:
    if environment in APPROVAL_REQUIRED_ENVIRONMENTS and not approval_id:
        raise InvalidRequest(
            f"deployments to {environment} require an approval_id",
            {"field": "approval_id", "environment": environment},
        )


ApprovalVerdict = Literal["active", "expired", "revoked", "mismatch", "not_found"]
_VERDICT_MESSAGES = {
    "expired": "approval {id} has expired",
    "revoked": "approval {id} has been revoked",
    "mismatch": "approval {id} is not for release {release} in {environment}",
    "not_found": "approval {id} does not exist",
}


def require_active_approval(verdict: str, approval_id: str, release_id: str, environment: str) -> None:
    """The approval service's verdict for this release and environment, right now."""
    if verdict == "active":
        return
    template = _VERDICT_MESSAGES.get(verdict, "approval {id} is not active ({reason})")
    message = template.format(id=approval_id, release=release_id, environment=environment, reason=verdict)
    raise AuthorizationFailed(
        message,
        {"reason": verdict, "approval_id": approval_id, "release_id": release_id, "environment": environment},
    )


def gitops_path(target: Target) -> str:
    """``environments/{env}/{repository}-{project}/release.yaml``, the template taken literally.

    A repository ``owner/name`` therefore nests: ``environments/dev/owner/name-api/release.yaml``.
    Keeping the slash (rather than flattening it to ``-``) cannot make ``a-b/c`` and ``a/b-c``
    collide, and keeps one directory per owner for an Argo CD directory generator.
    """
    return f"environments/{target.environment}/{target.repository}-{target.project}/release.yaml"


def _q(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: no value can break the document.
    return json.dumps(value, ensure_ascii=False)


def release_pointer(d: NewDeployment) -> bytes:
    """The ReleasePointer document committed for a deployment."""
    r = d.release
    lines = [
        f"apiVersion: {POINTER_API_VERSION}",
        f"kind: {POINTER_KIND}",
        "metadata:",
        f"  name: {_q(_k8s_name(f'{r.repository}-{r.project}'))}",
        "  annotations:",
        f"    forge.dev/environment: {_q(d.environment)}",
        f"    forge.dev/repository: {_q(r.repository)}",
        f"    forge.dev/project: {_q(r.project)}",
        f"    forge.dev/deployment-id: {_q(d.id)}",
        f"    forge.dev/release-id: {_q(r.id)}",
    ]
    if d.approval_id:
        lines.append(f"    forge.dev/approval-id: {_q(d.approval_id)}")
    lines += [
        "spec:",
        f"  release: {_q(r.commit_sha)}",
        f"  releaseNumber: {r.release_number}",
    ]
    if r.aliases:
        lines.append("  aliases:")
        lines += [f"    - {_q(a)}" for a in r.aliases]
    else:
        lines.append("  aliases: []")
    lines += [
        f"  ociUri: {_q(r.oci_uri)}",
        f"  deployedBy: {_q(d.deployed_by)}",
        f"  deployedAt: {_q(isoformat(d.deployed_at))}",
    ]
    return ("\n".join(lines) + "\n").encode()


_DEPLOYMENT_ID = re.compile(r'^\s+forge\.dev/deployment-id:\s*"([0-9a-fA-F-]{36})"\s*$', re.MULTILINE)


def pointer_deployment_id(document: bytes | None) -> str | None:
    """Which deployment a committed ReleasePointer belongs to (None when absent or foreign)."""
    if not document:
        return None
    m = _DEPLOYMENT_ID.search(document.decode("utf-8", errors="replace"))
    if not m:
        return None
    try:
        return str(uuid.UUID(m.group(1)))
    except ValueError:
        return None


def _k8s_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:253] or "release"


def commit_message(d: NewDeployment) -> str:
    r = d.release
    lines = [
        f"Deploy {r.repository} {r.project} release {r.release_number} ({r.commit_sha[:12]}) to {d.environment}",
        "",
        f"Forge-Deployment-Id: {d.id}",
        f"Forge-Release-Id: {r.id}",
        f"Forge-Deployed-By: {d.deployed_by}",
    ]
    if d.approval_id:
        lines.append(f"Forge-Approval-Id: {d.approval_id}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PendingDeployment:
    id: str
    # None while the commit is being pushed, or forever if the process died right after the
    # push (an "orphan": the reconciler recovers its sha from the GitOps history).
    gitops_commit_sha: str | None


@dataclass
class Resolution:
    """What to do with a target's pending deployments given the revision the target applied."""

    activate: str | None = None
    overtaken: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.activate is None and not self.overtaken


def resolve(
    pending: Sequence[PendingDeployment], applied_deployment_id: str | None, landed: Iterable[str]
) -> Resolution:
    """Decide from the GitOps truth, not from arrival order.

    ``applied_deployment_id`` is the deployment whose pointer the applied revision holds;
    ``landed`` the pending deployments whose commit is part of that revision's history. The
    applied one becomes active; the others that landed were overwritten before they were applied
    (superseded without ever being active); the rest have not been applied yet and wait.
    """
    result = Resolution()
    if applied_deployment_id is None:
        return result
    landed_ids = set(landed)
    for p in pending:
        if p.id == applied_deployment_id:
            result.activate = p.id
        elif p.id in landed_ids:
            result.overtaken.append(p.id)
    return result
