"""What a deployment reports to GitHub: a GitHub deployment and its statuses (pure builders).

Each Forge deployment becomes a GitHub deployment of the release's commit (environment = the
Forge environment, payload naming the release number and the Forge deployment), then gets the
statuses ``in_progress`` (committed to GitOps, waiting to be applied), ``success`` (active),
``failure`` (with the reason) and ``inactive`` (superseded). The calls are queued in the GitHub
outbox (:mod:`forge_common.github`) in the transaction of the change they report, ordered per
target, so GitHub sees a target's deployments and statuses in the order they happened.
"""

from __future__ import annotations

from urllib.parse import quote

from forge_common.github import GitHubRequest

from .domain import NewDeployment, Target

__all__ = ["created", "status"]

# GitHub refuses a deployment status description over 140 characters.
_DESCRIPTION_LIMIT = 140


def _ordering_key(target: Target) -> str:
    return f"deployment:{target.key}"


def _github_id(deployment_id: str) -> str:
    """Name of the saved id of the GitHub deployment (GitHub numbers it when it is created)."""
    return f"github:deployment:{deployment_id}"


def _history_url(target: Target) -> str:
    repository = quote(target.repository, safe="/")
    return f"${{public_url}}/v1/deployments/{target.environment}/{repository}/{quote(target.project)}/history"


def created(d: NewDeployment) -> list[GitHubRequest]:
    """The GitHub deployment of a new Forge deployment, and its ``in_progress`` status."""
    r = d.release
    create = GitHubRequest(
        ordering_key=_ordering_key(d.target),
        path=f"/repos/{r.repository}/deployments",
        body={
            "ref": r.commit_sha,
            "task": "deploy",
            "environment": d.environment,
            "description": _short(f"{r.project} release {r.release_number} by {d.deployed_by}"),
            # The release was built and checked by Forge: GitHub must not merge the default
            # branch in or wait for other commit statuses.
            "auto_merge": False,
            "required_contexts": [],
            "production_environment": d.environment == "production",
            "payload": {
                "forge_deployment_id": d.id,
                "release_id": r.id,
                "release_number": r.release_number,
                "project": r.project,
            },
        },
        save_as=_github_id(d.id),
    )
    return [create, status(d.id, d.target, "in_progress", "committed to the GitOps repository")]


def status(deployment_id: str, target: Target, state: str, description: str) -> GitHubRequest:
    """A status of the GitHub deployment of ``deployment_id``: in_progress, success, failure,
    inactive. ``auto_inactive`` is off: Forge says itself which deployment a success supersedes."""
    return GitHubRequest(
        ordering_key=_ordering_key(target),
        path=f"/repos/{target.repository}/deployments/${{{_github_id(deployment_id)}}}/statuses",
        body={
            "state": state,
            "description": _short(description),
            "environment": target.environment,
            "log_url": _history_url(target),
            "auto_inactive": False,
        },
    )


def _short(text: str) -> str:
    return text if len(text) <= _DESCRIPTION_LIMIT else text[: _DESCRIPTION_LIMIT - 1] + "…"
