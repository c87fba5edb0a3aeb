"""What the deployment service asks other systems: the release and approval services (with the
caller's token) and, when configured, Argo CD's application API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from forge_common.client import ServiceClient, ServiceResponse
from forge_common.errors import AuthenticationFailed, AuthorizationFailed, BadGateway, NotFound

from .domain import PinnedArtifact, Release

__all__ = ["ApplicationStatus", "ApprovalClient", "ArgoCDClient", "ReleaseClient"]


def _upstream_error(name: str, resp: ServiceResponse) -> BadGateway:
    return BadGateway(
        f"the {name} service answered {resp.status}",
        {"upstream_status": resp.status, "upstream_code": resp.error_code()},
    )


def _raise_auth(resp: ServiceResponse) -> None:
    message = ""
    if isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict):
        message = str(resp.body["error"].get("message") or "")
    if resp.status == 401:
        raise AuthenticationFailed(message or "the token was refused")
    if resp.status == 403:
        raise AuthorizationFailed(message or "this token may not read the release")


def _pinned_artifacts(items: list[Any]) -> tuple[PinnedArtifact, ...]:
    """The release's artifacts that carry a digest, named by it (tag dropped)."""
    out = []
    for item in items:
        if not isinstance(item, dict) or not item.get("digest"):
            continue
        digest = str(item["digest"])
        ref = str(item.get("tracking_oci_uri") or "").split("@", 1)[0]
        head, _, last = ref.rpartition("/")
        if ":" in last:
            ref = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
        out.append(PinnedArtifact(str(item["name"]), str(item.get("type") or ""), digest, f"{ref}@{digest}"))
    return tuple(out)


class ReleaseClient:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.http = ServiceClient(base_url, "release", timeout=timeout)

    async def get(self, release_id: str, token: str) -> Release:
        resp = await self.http.get(f"/v1/releases/{quote(release_id, safe='')}", token=token)
        if resp.status == 404:
            raise NotFound(f"release {release_id} does not exist", {"release_id": release_id})
        _raise_auth(resp)
        if not resp.ok or not isinstance(resp.body, dict):
            raise _upstream_error("release", resp)
        body: dict[str, Any] = resp.body
        try:
            aliases = tuple(str(a["alias"]) if isinstance(a, dict) else str(a) for a in (body.get("aliases") or []))
            return Release(
                id=str(body["id"]),
                repository=str(body["repository"]),
                project=str(body["project"]),
                commit_sha=str(body["commit_sha"]),
                release_number=int(body["release_number"]),
                oci_uri=str(body.get("oci_uri") or ""),
                aliases=aliases,
                artifacts=_pinned_artifacts(body.get("artifacts") or []),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadGateway("the release service sent an incomplete release", {"missing": str(exc)}) from exc

    async def close(self) -> None:
        await self.http.close()


class ApprovalClient:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.http = ServiceClient(base_url, "approval", timeout=timeout)

    async def check(self, approval_id: str, release_id: str, environment: str, token: str) -> str:
        """The approval's verdict for this release and environment right now (contract #3)."""
        resp = await self.http.get(
            "/v1/approvals/check",
            token=token,
            params={"approval_id": approval_id, "release_id": release_id, "environment": environment},
        )
        _raise_auth(resp)
        if resp.status == 404:
            return "not_found"
        if not resp.ok or not isinstance(resp.body, dict) or "result" not in resp.body:
            raise _upstream_error("approval", resp)
        return str(resp.body["result"])

    async def close(self) -> None:
        await self.http.close()


@dataclass(frozen=True)
class ApplicationStatus:
    """The parts of an Argo CD Application the reconciler looks at."""

    found: bool
    revision: str = ""
    sync_status: str = ""
    health_status: str = ""
    detail: str = ""

    @property
    def applied_revision(self) -> str | None:
        """The revision the cluster runs, once synced and Healthy; None while it is not there."""
        if not self.found or not self.revision or self.health_status != "Healthy":
            return None
        if self.sync_status and self.sync_status != "Synced":
            return None
        return self.revision

    def describe(self) -> str:
        if not self.found:
            return self.detail or "application not found"
        return f"sync {self.sync_status or '?'} at {self.revision[:12] or '?'}, health {self.health_status or '?'}"


def _obj(parent: Any, key: str) -> dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


class ArgoCDClient:
    """``GET /api/v1/applications/{name}`` of the Argo CD API server, with a bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=3)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def application(self, name: str) -> ApplicationStatus:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.base_url}/api/v1/applications/{quote(name, safe='')}"
        try:
            async with self._http().get(url, headers=headers) as resp:
                if resp.status == 404:
                    return ApplicationStatus(found=False, detail=f"Argo CD application {name} not found")
                if resp.status != 200:
                    return ApplicationStatus(found=False, detail=f"Argo CD answered {resp.status} for {name}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return ApplicationStatus(found=False, detail=f"Argo CD unreachable: {type(exc).__name__}")
        status = _obj(body, "status")
        sync, health = _obj(status, "sync"), _obj(status, "health")
        return ApplicationStatus(
            found=True,
            revision=str(sync.get("revision") or ""),
            sync_status=str(sync.get("status") or ""),
            health_status=str(health.get("status") or ""),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
