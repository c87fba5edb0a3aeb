"""Publishing a release as an OCI artifact.

A release becomes one OCI image manifest (``artifactType`` :data:`ARTIFACT_TYPE`) whose config
blob carries the release metadata and trigger, and whose single layer, ``release.json``,
carries the whole release document with its artifact references. It is stored at
``{registry}/{repository}/{project}:{commit-sha}`` (repository and project lower-cased, as OCI
names must be). ``oci_digest`` is the ``sha256:`` digest of the exact manifest bytes pushed.

Two publishers share that content:

* :class:`RegistryPublisher` (``FORGE_OCI_REGISTRY`` set) pushes with oras-py over the OCI
  distribution API.
* :class:`LayoutPublisher` (the embedded default) writes a standard OCI image layout per
  ``{repository}/{project}`` under ``FORGE_OCI_LAYOUT_DIR``; the commit SHA is the ref name in
  ``index.json``. oras (``--oci-layout``), skopeo (``oci:``) and crane read it.

Both are idempotent for a tag: publishing again replaces what the tag points to, which is what
makes a retry after a crash converge (see the service's README).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
import structlog
from requests.adapters import HTTPAdapter

from forge_common.errors import BadGateway
from forge_common.events import isoformat

from .domain import Artifact, NewRelease
from .settings import Settings

__all__ = [
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "LAYER_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "Blob",
    "LayoutPublisher",
    "OciArtifact",
    "Publisher",
    "RegistryPublisher",
    "build_artifact",
    "make_publisher",
]

log = structlog.get_logger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.forge.release.v1"
CONFIG_MEDIA_TYPE = "application/vnd.forge.release.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.forge.release.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        if annotations:
            desc["annotations"] = annotations
        return desc


@dataclass(frozen=True)
class OciArtifact:
    repository: str  # OCI repository path below the registry: owner/name/project, lower-case
    tag: str
    config: Blob
    layer: Blob
    manifest: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest


def oci_path(repository: str, project: str) -> str:
    return f"{repository}/{project}".lower()


def _artifact_entry(artifact: Artifact) -> dict[str, Any]:
    entry: dict[str, Any] = {
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
    config = Blob(CONFIG_MEDIA_TYPE, _canonical(meta))
    layer = Blob(LAYER_MEDIA_TYPE, _canonical(document))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config.descriptor(),
        "layers": [layer.descriptor({TITLE: "release.json"})],
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
        Blob(MANIFEST_MEDIA_TYPE, _canonical(manifest)),
    )


class Publisher(Protocol):
    def uri(self, repository: str, project: str, commit_sha: str) -> str: ...

    async def publish(self, artifact: OciArtifact) -> str:
        """Store the artifact under its tag; return the manifest digest."""
        ...

    async def close(self) -> None: ...


# --- embedded: OCI image layout on disk ------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(target: Path, data: bytes) -> Path:
    """Write ``data`` next to ``target`` under a temporary name (not yet durable)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(tmp)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FSYNC_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="oci-fsync")


def _fsync_files(paths: list[Path]) -> None:
    """fsync several new files at once: the filesystem's journal commits them together, so
    this costs about one fsync instead of one per file."""
    if len(paths) == 1:
        _fsync_path(paths[0])
        return
    for future in [_FSYNC_POOL.submit(_fsync_path, p) for p in paths]:
        future.result()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every thread and process writing this layout."""
    with path.open("a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class LayoutPublisher:
    """One OCI image layout per ``{repository}/{project}``; the commit SHA is the ref name."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync

    def layout_dir(self, repository_path: str) -> Path:
        return self.root / repository_path

    def uri(self, repository: str, project: str, commit_sha: str) -> str:
        return f"oci-layout://{self.layout_dir(oci_path(repository, project))}:{commit_sha}"

    async def publish(self, artifact: OciArtifact) -> str:
        return await asyncio.to_thread(self._publish, artifact)

    async def close(self) -> None:
        return None

    def _publish(self, artifact: OciArtifact) -> str:
        """Crash-safe: blobs become visible (rename) only once durable, and index.json, which
        makes the tag point at the manifest, is replaced last, atomically."""
        layout = self.layout_dir(artifact.repository)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        temps: list[Path] = []
        try:
            pending: list[tuple[Path, Path]] = []
            marker = layout / "oci-layout"
            if not marker.exists():
                pending.append((_write_temp(marker, _canonical({"imageLayoutVersion": "1.0.0"})), marker))
            for blob in (artifact.config, artifact.layer, artifact.manifest):
                target = blobs / blob.digest.removeprefix("sha256:")
                if not target.exists():
                    pending.append((_write_temp(target, blob.data), target))
            temps = [tmp for tmp, _ in pending]
            with _locked(layout / ".index.lock"):
                index_path = layout / "index.json"
                index: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
                if index_path.exists():
                    index = json.loads(index_path.read_bytes())
                entries = [
                    m for m in index.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) != artifact.tag
                ]
                entry = artifact.manifest.descriptor({REF_NAME: artifact.tag})
                entry["artifactType"] = ARTIFACT_TYPE
                entries.append(entry)
                index["manifests"] = entries
                index_tmp = _write_temp(index_path, _canonical(index))
                temps.append(index_tmp)
                if self.fsync:
                    _fsync_files(temps)
                for tmp, target in pending:
                    os.replace(tmp, target)
                if self.fsync and pending:
                    _fsync_dir(blobs)
                os.replace(index_tmp, index_path)
                if self.fsync:
                    _fsync_dir(layout)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return artifact.digest


# --- a registry, through oras ----------------------------------------------------------------


class _TimeoutAdapter(HTTPAdapter):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def _registry_class() -> type[Any]:
    import oras.provider

    class _Registry(oras.provider.Registry):  # type: ignore[misc]
        # oras retries failed requests for minutes with sleeps in between; a release create
        # waits on the publish, so fail fast here and let the caller retry the whole create.
        do_request = oras.provider.Registry.do_request.__wrapped__

    return _Registry


class RegistryPublisher:
    def __init__(
        self, registry: str, insecure: bool, username: str = "", password: str = "", timeout: float = 10.0
    ) -> None:
        self.registry = registry
        host = registry.split("/", 1)[0]
        hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        self.insecure = insecure or hostname in ("localhost", "127.0.0.1", "[::1]")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._local = threading.local()
        self._cls = _registry_class()

    def uri(self, repository: str, project: str, commit_sha: str) -> str:
        return f"{self.registry}/{oci_path(repository, project)}:{commit_sha}"

    async def publish(self, artifact: OciArtifact) -> str:
        try:
            return await asyncio.to_thread(self._publish, artifact)
        except BadGateway:
            raise
        except Exception as exc:
            log.warning("oci.publish_failed", registry=self.registry, error=str(exc))
            raise BadGateway(
                "the OCI registry is unavailable; the release was not created", {"registry": self.registry}
            ) from exc

    async def close(self) -> None:
        return None

    def _client(self) -> Any:
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._cls(hostname=self.registry.split("/", 1)[0], insecure=self.insecure)
            adapter = _TimeoutAdapter(self.timeout)
            reg.session.mount("http://", adapter)
            reg.session.mount("https://", adapter)
            if self.username:
                reg.auth.set_basic_auth(self.username, self.password)
            self._local.registry = reg
        return reg

    def _publish(self, artifact: OciArtifact) -> str:
        import oras.container

        reg = self._client()
        container = oras.container.Container(f"{self.registry}/{artifact.repository}:{artifact.tag}")
        with tempfile.TemporaryDirectory(prefix="forge-oci-") as tmp:
            for blob in (artifact.config, artifact.layer):
                path = Path(tmp) / blob.digest.removeprefix("sha256:")
                path.write_bytes(blob.data)
                resp = reg.upload_blob(str(path), container, blob.descriptor())
                if resp.status_code not in (200, 201, 202):
                    raise BadGateway(
                        f"the OCI registry refused a blob ({resp.status_code})",
                        {"registry": self.registry, "digest": blob.digest},
                    )
        # The manifest goes up as our exact bytes, so its digest is the one we computed.
        resp = reg.do_request(
            f"{reg.prefix}://{container.manifest_url()}",
            "PUT",
            data=artifact.manifest.data,
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
        )
        if resp.status_code not in (200, 201):
            raise BadGateway(f"the OCI registry refused the manifest ({resp.status_code})", {"registry": self.registry})
        pushed = resp.headers.get("Docker-Content-Digest")
        if pushed and pushed != artifact.digest:
            raise BadGateway(
                "the OCI registry stored a different manifest digest", {"expected": artifact.digest, "got": pushed}
            )
        return artifact.digest


def make_publisher(settings: Settings) -> Publisher:
    if settings.oci_registry:
        return RegistryPublisher(
            settings.oci_registry, settings.oci_insecure, settings.oci_username, settings.oci_password
        )
    return LayoutPublisher(settings.layout_root, settings.oci_layout_fsync)
