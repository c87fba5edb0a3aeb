"""Pure rules of deployments: what may be deployed, what the GitOps repository holds, and how
a pending deployment is resolved once the target has applied a revision. No I/O here."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from forge_common.errors import AuthorizationFailed, InvalidRequest
from forge_common.events import DeploymentCompleted, DeploymentCreated, DeploymentFailed, isoformat

__all__ = [
    "APPROVAL_REQUIRED_ENVIRONMENTS",
    "ENVIRONMENTS",
    "Activated",
    "ActiveDeployment",
    "ApprovalVerdict",
    "Deployment",
    "FailedDeployment",
    "Landed",
    "NewDeployment",
    "PendingDeployment",
    "PinnedArtifact",
    "Release",
    "Resolution",
    "Target",
    "activate",
    "app_name",
    "commit_message",
    "committed",
    "fail",
    "gitops_path",
    "legacy_gitops_path",
    "pointer_deployment_id",
    "pointer_target",
    "release_pointer",
    "require_active_approval",
    "require_approval_id",
    "resolve",
    "target_components",
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
        """The target's identity: repository and project names are case-insensitive."""
        return f"{self.environment}/{self.repository.lower()}/{self.project.lower()}"


@dataclass(frozen=True)
class PinnedArtifact:
    """A release's artifact as a deployment points at it: by digest, never by tag."""

    name: str
    type: str
    digest: str
    reference: str  # the tracking artifact, ``...@sha256:...``


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
    artifacts: tuple[PinnedArtifact, ...] = ()


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


# One path component of a repository owner, name or project, as the release service accepts it:
# never a "/", never "." or "..", so each one is exactly one directory level.
_COMPONENT = re.compile(r"^[A-Za-z0-9]+(?:(?:[._]|__|-+)[A-Za-z0-9]+)*$")


def target_components(target: Target) -> tuple[str, str, str]:
    """``(owner, name, project)`` of a target, lower-cased: the case-insensitive identity.

    Each is checked to be one path component, so no two targets can share a GitOps directory.
    """
    owner, sep, name = target.repository.partition("/")
    parts = (owner, name, target.project)
    if not sep or not all(_COMPONENT.match(p) for p in parts):
        raise InvalidRequest(
            f"{target.repository!r} project {target.project!r} cannot name a GitOps directory "
            "(repository 'owner/name', project one component of letters, digits, '.', '_', '-')",
            {"repository": target.repository, "project": target.project},
        )
    return owner.lower(), name.lower(), target.project.lower()


def gitops_path(target: Target) -> str:
    """``environments/{env}/{owner}/{name}/{project}/release.yaml``, lower-cased.

    One directory level per part, and no part can hold a "/": two different (repository,
    project) pairs can never meet (the old ``{owner}/{name}-{project}`` did: ``acme/web`` +
    ``api-gateway`` and ``acme/web-api`` + ``gateway``). Lower-cased because repository and
    project names are case-insensitive (``Acme/Shop`` is ``acme/shop``).
    """
    owner, name, project = target_components(target)
    return f"environments/{target.environment}/{owner}/{name}/{project}/release.yaml"


def legacy_gitops_path(target: Target) -> str:
    """Where the pointer lived before the per-part layout (what ``migrate-gitops`` moves)."""
    return f"environments/{target.environment}/{target.repository}-{target.project}/release.yaml"


_APP_NAME_MAX = 63  # a Kubernetes object name (RFC 1123 label) holds at most 63 characters
_APP_NAME_PLAIN_MAX = 52  # longer encodings are cut here and get "-" + 10 hex of their sha256
_ESCAPES = {"-": "-h", ".": "-d", "_": "-u"}


def _escape(component: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in component)


def app_name(target: Target) -> str:
    """An Argo CD application name no other target can have, within Kubernetes' rules.

    Each lower-cased part is escaped (``-`` → ``-h``, ``.`` → ``-d``, ``_`` → ``-u``) and the
    parts are joined with ``--``: after a ``-`` comes either ``-`` (a separator) or an escape
    letter, so the encoding decodes back to exactly one target (injective). An encoding longer
    than 52 characters is cut to 52 and suffixed with ``-`` and 10 hex characters of its
    SHA-256 (63 in all); plain encodings are never that long, so the two forms never meet.
    """
    owner, name, project = target_components(target)
    encoded = "--".join(_escape(p) for p in (target.environment, owner, name, project))
    if len(encoded) <= _APP_NAME_PLAIN_MAX:
        return encoded
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    name_ = f"{encoded[:_APP_NAME_PLAIN_MAX]}-{digest}"
    assert len(name_) == _APP_NAME_MAX
    return name_


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
        f"  name: {_q(app_name(d.target))}",
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
    if r.artifacts:
        # What a GitOps consumer deploys: each artifact pinned by digest, exactly what was built.
        lines.append("  artifacts:")
        for a in r.artifacts:
            lines += [
                f"    - name: {_q(a.name)}",
                f"      type: {_q(a.type)}",
                f"      digest: {_q(a.digest)}",
                f"      reference: {_q(a.reference)}",
            ]
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


_ANNOTATION = re.compile(r'^\s+forge\.dev/([a-z-]+):\s*("(?:[^"\\]|\\.)*")\s*$', re.MULTILINE)


def pointer_target(document: bytes) -> Target | None:
    """The target a committed ReleasePointer names in its annotations (None when it does not)."""
    found: dict[str, str] = {}
    for key, quoted in _ANNOTATION.findall(document.decode("utf-8", errors="replace")):
        try:
            value = json.loads(quoted)
        except ValueError:
            continue
        if isinstance(value, str):
            found[key] = value
    environment, repository, project = (found.get(k) for k in ("environment", "repository", "project"))
    if environment not in ENVIRONMENTS or not repository or not project:
        return None
    return Target(environment, repository, project)


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
class Deployment:
    """A stored deployment, as the current-deployment and history endpoints show it."""

    id: str
    release_id: str
    release_number: int
    repository: str
    project: str
    environment: str
    status: Status
    deployed_at: dt.datetime
    deployed_by: str
    gitops_commit_sha: str | None
    reconciled_at: dt.datetime | None
    approval_id: str | None
    error: str | None


@dataclass(frozen=True)
class Landed:
    """What recording a deployment's commit returns: what its ``deployment.created`` names."""

    release_id: str
    environment: str
    deployed_by: str
    repository: str
    project: str


@dataclass(frozen=True)
class Activated:
    environment: str
    deployed_at: dt.datetime
    committed_at: dt.datetime | None
    reconciled_at: dt.datetime
    repository: str
    project: str


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


# --- transitions: each returns the new state and the event recorded with it ----------------


@dataclass(frozen=True)
class FailedDeployment:
    id: str
    environment: str
    error: str


@dataclass(frozen=True)
class ActiveDeployment:
    id: str
    environment: str
    reconciliation_seconds: float


def committed(
    deployment_id: str, release_id: str, environment: str, deployed_by: str, sha: str, repository: str, project: str
) -> tuple[PendingDeployment, DeploymentCreated]:
    """The pointer landed as commit ``sha`` (pushed by the service, or recovered from the GitOps
    history by the reconciler): still pending until the target applies it. ``repository`` and
    ``project`` are the release's (every deployment event names them)."""
    event = DeploymentCreated(
        deployment_id=deployment_id,
        release_id=release_id,
        environment=environment,
        deployed_by=deployed_by,
        gitops_commit_sha=sha,
        repository=repository,
        project=project,
    )
    return PendingDeployment(deployment_id, sha), event


def fail(
    deployment_id: str, environment: str, message: str, repository: str, project: str
) -> tuple[FailedDeployment, DeploymentFailed]:
    """A pending deployment that will not become active: its GitOps commit did not land
    (refused, remote unreachable or timed out), or it was not reconciled in time. Every way a
    deployment fails goes through here, so subscribers learn of each failure the same way."""
    event = DeploymentFailed(
        deployment_id=deployment_id,
        environment=environment,
        status="failed",
        error_message=message,
        repository=repository,
        project=project,
    )
    return FailedDeployment(deployment_id, environment, message), event


def activate(
    deployment_id: str,
    environment: str,
    started: dt.datetime,
    reconciled_at: dt.datetime,
    repository: str,
    project: str,
) -> tuple[ActiveDeployment, DeploymentCompleted]:
    """The target applied the deployment's revision; ``started`` is when its commit landed (or,
    unknown, when it was requested)."""
    seconds = max(0.0, (reconciled_at - started).total_seconds())
    event = DeploymentCompleted(
        deployment_id=deployment_id,
        environment=environment,
        status="active",
        reconciliation_duration_seconds=round(seconds),
        repository=repository,
        project=project,
    )
    return ActiveDeployment(deployment_id, environment, seconds), event
