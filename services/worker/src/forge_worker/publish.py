"""Primary destinations of an artifact: ``oci://`` another registry, ``s3://`` a bucket,
``github-release`` the GitHub Release of a tag run. Each is retried on a server error (5xx or an
unreachable server) a few times with back-off; a refusal (4xx) fails at once with its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import structlog

from forge_common.jobs import ArtifactJob
from forge_common.oci import OciError, RegistryStore

from .packaging import Packaged

__all__ = ["Destinations", "PublishError"]

log = structlog.get_logger(__name__)
T = TypeVar("T")
ATTEMPTS = 3


class PublishError(Exception):
    """A destination refused the artifact or stayed unavailable; the message says which and why."""


class _Transient(Exception):
    pass


@dataclass
class Destinations:
    s3: Any  # the worker's aiobotocore client (FORGE_S3_*)
    github_api_url: str
    github_token: str
    oci_insecure: bool = False
    oci_username: str = ""
    oci_password: str = ""
    backoff: float = 0.5

    async def publish(self, job: ArtifactJob, packaged: Packaged, digest: str) -> list[str]:
        """Publish to every destination of ``job``, in order; the URIs published to."""
        uris: list[str] = []
        for target in job.publish:
            if target == "github-release":
                if not job.tag:
                    log.info("artifact.github_release_skipped", run_id=job.run_id, artifact=job.name)
                    continue
                uris.append(await self._retried(target, lambda: self._github(job, packaged)))
            elif target.startswith("s3://"):
                uris.append(await self._retried(target, lambda t=target: self._s3(t, job, packaged)))  # type: ignore[misc]
            else:
                uris.append(await self._retried(target, lambda t=target: self._oci(t, job, packaged, digest)))  # type: ignore[misc]
        return uris

    async def _retried(self, target: str, attempt: Callable[[], Awaitable[T]]) -> T:
        for number in range(1, ATTEMPTS + 1):
            try:
                return await attempt()
            except _Transient as exc:
                if number == ATTEMPTS:
                    raise PublishError(f"{target}: still failing after {ATTEMPTS} attempts: {exc}") from None
                log.warning("artifact.publish_retry", target=target, attempt=number, error=str(exc))
                await asyncio.sleep(self.backoff * 2 ** (number - 1))
        raise AssertionError("unreachable")

    async def _oci(self, target: str, job: ArtifactJob, packaged: Packaged, digest: str) -> str:
        host, _, repository = target.removeprefix("oci://").partition("/")
        store = RegistryStore(host, self.oci_insecure, self.oci_username, self.oci_password)
        try:
            ref = await asyncio.to_thread(
                store.push, repository, job.commit_sha, packaged.blobs, packaged.manifest, packaged.media_type
            )
        except OciError as exc:
            text = str(exc)
            if "unreachable" in text or "HTTP 5" in text:
                raise _Transient(text) from None
            raise PublishError(f"{target}: {text}") from None
        return f"oci://{ref.pinned(digest)}"

    async def _s3(self, target: str, job: ArtifactJob, packaged: Packaged) -> str:
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        parts = [prefix.strip("/"), job.repository, job.project, job.name, job.commit_sha, packaged.file_name]
        key = "/".join(p for p in parts if p)
        try:
            with packaged.file.open("rb") as body:
                await self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=packaged.file.stat().st_size)
        except Exception as exc:  # noqa: BLE001 - botocore's errors and connection failures, sorted below
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if not status or status >= 500:
                raise _Transient(str(exc)) from None
            raise PublishError(f"{target}: S3 refused the upload: {exc}") from None
        return f"s3://{bucket}/{key}"

    async def _github(self, job: ArtifactJob, packaged: Packaged) -> str:
        """GitHub's REST API: the tag's release (created when missing), then the asset upload."""
        if not self.github_token:
            raise PublishError("github-release: no FORGE_GITHUB_TOKEN configured on the worker")
        headers = {
            "Authorization": f"Bearer {self.github_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        base = self.github_api_url.rstrip("/")
        tag = job.tag or ""
        try:
            async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600)) as http:
                async with http.get(f"{base}/repos/{job.repository}/releases/tags/{quote(tag, safe='')}") as resp:
                    release = await self._github_json(resp, "find the release", (200, 404))
                if release is None:
                    body = {"tag_name": tag, "name": tag}
                    async with http.post(f"{base}/repos/{job.repository}/releases", json=body) as resp:
                        release = await self._github_json(resp, "create the release", (201,))
                assert release is not None
                upload = str(release["upload_url"]).split("{", 1)[0]
                name = f"{job.project}-{packaged.file_name}"
                with packaged.file.open("rb") as data:
                    async with http.post(
                        f"{upload}?name={quote(name)}",
                        data=data,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(packaged.file.stat().st_size),
                        },
                    ) as resp:
                        asset = await self._github_json(resp, "upload the asset", (201,))
        except aiohttp.ClientError as exc:
            raise _Transient(f"GitHub is unreachable: {exc}") from None
        assert asset is not None
        return str(asset.get("browser_download_url") or asset.get("url"))

    @staticmethod
    async def _github_json(resp: aiohttp.ClientResponse, what: str, ok: tuple[int, ...]) -> dict[str, Any] | None:
        if resp.status >= 500:
            raise _Transient(f"GitHub answered {resp.status} when asked to {what}")
        if resp.status not in ok:
            raise PublishError(
                f"github-release: GitHub refused to {what}: HTTP {resp.status} {(await resp.text())[:300]}"
            )
        if resp.status == 404:
            return None
        body = await resp.json()
        return body if isinstance(body, dict) else None
