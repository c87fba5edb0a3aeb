"""Primary destinations of an artifact: ``oci://`` another registry, ``s3://`` a bucket,
``github-release`` the GitHub Release of a tag run. Each is retried on a server error (5xx or an
unreachable server) a few times with back-off; a refusal (4xx) fails at once with its message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
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
                name = f"{job.project}-{packaged.file_name}"
                uris.append(await self.github_release(job.repository, job.tag, name, packaged.file))
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

    async def github_release(self, repository: str, tag: str, asset: str, file: Path) -> str:
        """Attach ``file`` as ``asset`` to the GitHub Release of ``tag`` (retried on 5xx); its
        download URL. Idempotent: an asset of that name and size already there is the answer."""
        return await self._retried("github-release", lambda: self._github(repository, tag, asset, file))

    async def _github(self, repository: str, tag: str, name: str, file: Path) -> str:
        """GitHub's REST API: the tag's release (created when missing), then the asset upload.

        An asset of the same name and size already attached (an earlier delivery of this job, or
        the upload answered 422 ``already_exists``) counts as done; one of another size is a
        refusal (someone else's file under that name)."""
        if not self.github_token:
            raise PublishError("github-release: no FORGE_GITHUB_TOKEN configured on the worker")
        headers = {
            "Authorization": f"Bearer {self.github_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        size = (await asyncio.to_thread(file.stat)).st_size
        try:
            async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600)) as http:
                release = await self._github_release_of(http, repository, tag, create=True)
                done = _attached(release, name, size)
                if done is not None:
                    return done
                upload = str(release["upload_url"]).split("{", 1)[0]
                with file.open("rb") as data:
                    async with http.post(
                        f"{upload}?name={quote(name)}",
                        data=data,
                        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                    ) as resp:
                        asset = await self._github_json(resp, "upload the asset", (201, 422))
                if asset is None:  # 422: the name is taken; ours if the size matches
                    again = await self._github_release_of(http, repository, tag, create=False)
                    done = _attached(again, name, size)
                    if done is None:
                        raise PublishError(
                            f"github-release: the release of {tag} already has an asset named {name} of another size"
                        )
                    return done
        except aiohttp.ClientError as exc:
            raise _Transient(f"GitHub is unreachable: {exc}") from None
        return str(asset.get("browser_download_url") or asset.get("url"))

    async def _github_release_of(
        self, http: aiohttp.ClientSession, repository: str, tag: str, *, create: bool
    ) -> dict[str, Any]:
        """The release of ``tag``; created when missing (a concurrent creation, 422, is looked up)."""
        base = self.github_api_url.rstrip("/")
        lookup = f"{base}/repos/{repository}/releases/tags/{quote(tag, safe='')}"
        async with http.get(lookup) as resp:
            release = await self._github_json(resp, "find the release", (200, 404))
        if release is None and create:
            body = {"tag_name": tag, "name": tag}
            async with http.post(f"{base}/repos/{repository}/releases", json=body) as resp:
                release = await self._github_json(resp, "create the release", (201, 422))
            if release is None:  # created by someone else meanwhile
                async with http.get(lookup) as resp:
                    release = await self._github_json(resp, "find the release", (200,))
        if release is None:
            raise PublishError(f"github-release: the release of {tag} disappeared")
        return release

    @staticmethod
    async def _github_json(resp: aiohttp.ClientResponse, what: str, ok: tuple[int, ...]) -> dict[str, Any] | None:
        if resp.status >= 500:
            raise _Transient(f"GitHub answered {resp.status} when asked to {what}")
        if resp.status not in ok:
            raise PublishError(
                f"github-release: GitHub refused to {what}: HTTP {resp.status} {(await resp.text())[:300]}"
            )
        if resp.status in (404, 422):
            if resp.status == 422 and not _already_exists(await resp.text()):
                raise PublishError(f"github-release: GitHub refused to {what}: HTTP 422 {(await resp.text())[:300]}")
            return None
        body = await resp.json()
        return body if isinstance(body, dict) else None


def _already_exists(text: str) -> bool:
    """GitHub's 422 for a name (release tag, asset name) that is taken: ``errors[].code``."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    errors = body.get("errors") if isinstance(body, dict) else None
    return isinstance(errors, list) and any(isinstance(e, dict) and e.get("code") == "already_exists" for e in errors)


def _attached(release: dict[str, Any], name: str, size: int) -> str | None:
    """The download URL of the release's asset ``name`` when it has ``size`` bytes."""
    for asset in release.get("assets") or []:
        if isinstance(asset, dict) and asset.get("name") == name:
            if asset.get("size") != size:
                raise PublishError(
                    f"github-release: the release already has an asset named {name} of "
                    f"{asset.get('size')} bytes, not {size}"
                )
            return str(asset.get("browser_download_url") or asset.get("url"))
    return None
