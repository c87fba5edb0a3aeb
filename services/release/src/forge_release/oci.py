"""Publishing a release as an OCI artifact.

A release becomes one OCI image manifest (``artifactType`` :data:`ARTIFACT_TYPE`) whose config
blob carries the release metadata and trigger, and whose single layer, ``release.json``,
carries the whole release document with its artifact references. It is stored at
``{registry}/{repository}/{project}:{commit-sha}`` (repository and project lower-cased, as OCI
names must be). ``oci_digest`` is the ``sha256:`` digest of the exact manifest bytes pushed.

Publishing goes through the stores of :mod:`forge_common.oci`, the same ones the worker pushes
artifacts with:

* :class:`RegistryPublisher` (``FORGE_OCI_REGISTRY`` set): a registry over the OCI
  distribution API (``forge_common.oci.RegistryStore``, oras-py).
* :class:`LayoutPublisher` (the embedded default): a standard OCI image layout per
  ``{repository}/{project}`` under ``FORGE_OCI_LAYOUT_DIR`` (``forge_common.oci.LayoutStore``,
  fsynced unless ``FORGE_OCI_LAYOUT_FSYNC=false``); the commit SHA is the ref name in
  ``index.json``. oras (``--oci-layout``), skopeo (``oci:``) and crane read it.

Both are idempotent for a tag: publishing again replaces what the tag points to, which is what
makes a retry after a crash converge (see the service's README).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from forge_common.errors import BadGateway
from forge_common.events import isoformat
from forge_common.oci import MANIFEST_MEDIA_TYPE, TITLE, BlobBytes, LayoutStore, OciError, OciStore, RegistryStore

from .domain import Artifact, NewRelease
from .settings import Settings

__all__ = [
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "LAYER_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "LayoutPublisher",
    "OciArtifact",
    "OciPublisher",
    "Publisher",
    "RegistryPublisher",
    "build_artifact",
    "make_publisher",
]

log = structlog.get_logger(__name__)

ARTIFACT_TYPE = "application/vnd.forge.release.v1"
CONFIG_MEDIA_TYPE = "application/vnd.forge.release.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.forge.release.v1+json"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclass(frozen=True)
class OciArtifact:
    repository: str  # OCI repository path below the registry: owner/name/project, lower-case
    tag: str
    config: BlobBytes
    layer: BlobBytes
    manifest: BlobBytes

    @property
    def digest(self) -> str:
        return self.manifest.digest


def oci_path(repository: str, project: str) -> str:
    return f"{repository}/{project}".lower()


def _artifact_entry(artifact: Artifact) -> dict[str, str | int | None]:
    entry: dict[str, str | int | None] = {
        "name": artifact.name,
        "type": artifact.type,
        "tracking_oci_uri": artifact.tracking_oci_uri,
        "primary_published_uri": artifact.primary_published_uri,
    }
    if artifact.digest is not None:
        entry.update(digest=artifact.digest, size=artifact.size, reference=artifact.pinned_reference)
    return entry


def build_artifact(release: NewRelease, release_number: int) -> OciArtifact:
    """The manifest and blobs of a release; deterministic for the same release."""
    trigger = {
        "trigger_type": release.trigger.trigger_type,
        "branch": release.trigger.branch,
        "tag": release.trigger.tag,
        "triggered_by": release.trigger.triggered_by,
    }
    meta = {
        "id": release.id,
        "repository": release.repository,
        "project": release.project,
        "commit_sha": release.commit_sha,
        "canonical_id": release.canonical_id,
        "release_number": release_number,
        "pipeline_run_id": release.pipeline_run_id,
        "created_at": isoformat(release.created_at),
        "created_by": release.created_by,
        "trigger": trigger,
    }
    document = {
        **meta,
        "artifacts": [_artifact_entry(a) for a in release.artifacts],
    }
    config = BlobBytes(_canonical(meta), CONFIG_MEDIA_TYPE)
    layer = BlobBytes(_canonical(document), LAYER_MEDIA_TYPE, {TITLE: "release.json"})
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": {
            "org.opencontainers.image.created": isoformat(release.created_at),
            "org.opencontainers.image.revision": release.commit_sha,
            "org.opencontainers.image.version": str(release_number),
            "org.opencontainers.image.title": f"{release.repository}/{release.project} release {release_number}",
            "dev.forge.release.id": release.id,
            # Each built artifact by digest: what this release is, byte for byte.
            **{f"dev.forge.artifact.{a.name}": a.pinned_reference for a in release.artifacts if a.pinned_reference},
        },
    }
    return OciArtifact(
        oci_path(release.repository, release.project),
        release.commit_sha,
        config,
        layer,
        BlobBytes(_canonical(manifest), MANIFEST_MEDIA_TYPE),
    )


class Publisher(Protocol):
    def uri(self, repository: str, project: str, commit_sha: str) -> str: ...

    async def publish(self, artifact: OciArtifact) -> str:
        """Store the artifact under its tag; return the manifest digest."""
        ...

    async def close(self) -> None: ...


class OciPublisher:
    """A release's artifact into a :class:`forge_common.oci.OciStore`, found at
    ``{base}/{repository}/{project}:{commit-sha}``; ``where`` names the registry or layout root
    in errors and logs."""

    def __init__(self, store: OciStore, base: str, where: str) -> None:
        self.store = store
        self.base = base
        self.where = where

    def uri(self, repository: str, project: str, commit_sha: str) -> str:
        return f"{self.base}/{oci_path(repository, project)}:{commit_sha}"

    async def publish(self, artifact: OciArtifact) -> str:
        try:
            await asyncio.to_thread(
                self.store.push,
                artifact.repository,
                artifact.tag,
                [artifact.config, artifact.layer],
                artifact.manifest.data,
                MANIFEST_MEDIA_TYPE,
                ARTIFACT_TYPE,
            )
        except OciError as exc:
            log.warning("oci.publish_failed", registry=self.where, error=str(exc))
            raise BadGateway(
                "the OCI registry is unavailable; the release was not created", {"registry": self.where}
            ) from exc
        return artifact.digest

    async def close(self) -> None:
        return None


class LayoutPublisher(OciPublisher):
    """One OCI image layout per ``{repository}/{project}``; the commit SHA is the ref name."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        super().__init__(LayoutStore(root, fsync=fsync), f"oci-layout://{root}", str(root))


class RegistryPublisher(OciPublisher):
    """A registry, ``host[:port][/namespace]``. Requests time out after ``timeout`` seconds and
    are not retried: a release create waits on the publish, so it fails fast and the caller
    retries the whole create."""

    def __init__(
        self, registry: str, insecure: bool, username: str = "", password: str = "", timeout: float = 10.0
    ) -> None:
        super().__init__(RegistryStore(registry, insecure, username, password, timeout), registry, registry)


def make_publisher(settings: Settings) -> Publisher:
    if settings.oci_registry:
        return RegistryPublisher(
            settings.oci_registry, settings.oci_insecure, settings.oci_username, settings.oci_password
        )
    return LayoutPublisher(settings.layout_root, settings.oci_layout_fsync)
