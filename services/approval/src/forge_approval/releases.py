"""The one seam to the release service: does a release exist, whose is it, who created it?"""

from __future__ import annotations

from typing import Any, Protocol

from forge_common.client import ServiceClient
from forge_common.errors import AuthorizationFailed, BadGateway, NotFound

from .domain import ReleaseFacts

__all__ = ["HttpReleases", "Releases"]


class Releases(Protocol):
    async def facts(self, release_id: str, token: str) -> ReleaseFacts:
        """The release's creator; raises NotFound when the release does not exist."""
        ...


def _not_found(release_id: str) -> NotFound:
    return NotFound(f"release {release_id} does not exist", {"release_id": release_id, "field": "release_id"})


class HttpReleases:
    """Asks ``GET /v1/releases/{release_uuid}`` of the release service with the caller's token."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    async def facts(self, release_id: str, token: str) -> ReleaseFacts:
        resp = await self.client.get(f"/v1/releases/{release_id}", token=token)
        if resp.status == 404:
            raise _not_found(release_id)
        if resp.status == 403:
            # The caller's token may not read it (a workload token bound to another repository).
            raise AuthorizationFailed(
                "this token may not act on the release's repository", {"release_id": release_id, "field": "release_id"}
            )
        if resp.status != 200 or not isinstance(resp.body, dict):
            raise BadGateway(
                "the release service could not confirm the release",
                {"release_id": release_id, "upstream_status": resp.status, "upstream_error": resp.error_code()},
            )
        body: dict[str, Any] = resp.body
        trigger = body.get("trigger") if isinstance(body.get("trigger"), dict) else {}
        created_by, repository, project = body.get("created_by"), body.get("repository"), body.get("project")
        if not isinstance(created_by, str):
            raise BadGateway("the release service sent a release without created_by", {"release_id": release_id})
        if not isinstance(repository, str) or not isinstance(project, str):
            raise BadGateway(
                "the release service sent a release without repository or project", {"release_id": release_id}
            )
        trigger = trigger if isinstance(trigger, dict) else {}
        return ReleaseFacts(
            release_id=release_id,
            created_by=created_by,
            repository=repository,
            project=project,
            triggered_by=_text(trigger.get("triggered_by")),
            created_by_id=_text(body.get("created_by_id")),
            triggered_by_id=_text(body.get("triggered_by_id")),
        )

    async def close(self) -> None:
        await self.client.close()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
