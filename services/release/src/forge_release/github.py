"""What a created release reports to GitHub: a commit status on the release's commit.

Context ``forge/release/<project>`` (one per project, so a monorepo's releases of one commit
sit side by side), state ``success``, the release number in the description, and a link to the
release in the API. Queued in the GitHub outbox (:mod:`forge_common.github`) inside the
release's own transaction: a rolled-back create reports nothing, and GitHub being slow or down
never holds up a release.
"""

from __future__ import annotations

from urllib.parse import quote

from forge_common.github import GitHubRequest

from .domain import NewRelease

__all__ = ["release_status"]


def release_status(release: NewRelease, number: int) -> GitHubRequest:
    repository = quote(release.repository, safe="/")
    return GitHubRequest(
        ordering_key=f"release:{release.repository.lower()}/{release.project.lower()}",
        path=f"/repos/{release.repository}/statuses/{release.commit_sha}",
        body={
            "state": "success",
            "context": f"forge/release/{release.project}",
            "description": f"Release {number} of {release.project}"[:140],
            "target_url": f"${{public_url}}/v1/releases/{repository}/{quote(release.project)}/{number}",
        },
    )
