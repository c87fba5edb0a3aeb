"""OCI artifacts kept as files: push blobs and exact manifest bytes, pull them back verified.

Two stores speak the same interface:

* :class:`LayoutStore`, the embedded default: one standard OCI image layout per repository
  under a root directory (the one the release service writes, ``FORGE_OCI_LAYOUT_DIR``); the
  tag is the ``org.opencontainers.image.ref.name`` of its entry in ``index.json``. oras
  (``--oci-layout``), skopeo (``oci:``) and crane read it. References look like
  ``oci-layout:///abs/root/owner/name/project/artifact:tag``.
* :class:`RegistryStore`: a registry over the OCI distribution API through oras-py (its
  session, authentication and URL rules). Blobs go up as one streamed ``PUT`` from the file,
  never read into memory; a blob the registry already has is not sent again.

Manifests are pushed as the caller's exact bytes, so the digest a build produced is the digest
the registry serves. Pulls check every digest before anything is written to its destination.
Blobs come from files (:class:`BlobFile`, the worker's artifacts) or memory (:class:`BlobBytes`,
the release service's small documents). Both the worker's artifact push and the release
service's publish go through these stores.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = [
    "EMPTY_CONFIG_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPES",
    "REF_NAME",
    "TITLE",
    "Blob",
    "BlobBytes",
    "BlobFile",
    "DigestMismatch",
    "LayoutStore",
    "OciError",
    "OciStore",
    "Reference",
    "RegistryStore",
    "sha256_file",
    "store_for",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_MEDIA_TYPES = (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE)
EMPTY_CONFIG_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
_CHUNK = 1024 * 1024


class OciError(Exception):
    """A push or pull did not happen; the message says why, for a human."""


class DigestMismatch(OciError):
    """Content did not hash to the digest that names it."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class BlobFile:
    """A blob stored in a file, with its descriptor."""

    path: Path
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, path: Path, media_type: str, annotations: dict[str, str] | None = None) -> BlobFile:
        return cls(path, media_type, sha256_file(path), path.stat().st_size, annotations or {})

    def descriptor(self) -> dict[str, Any]:
        return _descriptor(self.media_type, self.digest, self.size, self.annotations)

    def open(self) -> IO[bytes]:
        return self.path.open("rb")

    def chunks(self) -> Iterator[bytes]:
        return _file_chunks(self.path)


@dataclass(frozen=True)
class BlobBytes:
    """A blob held in memory (a small document: a config, a manifest's one layer)."""

    data: bytes
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        return _descriptor(self.media_type, self.digest, self.size, self.annotations)

    def open(self) -> IO[bytes]:
        return io.BytesIO(self.data)

    def chunks(self) -> Iterator[bytes]:
        return iter([self.data])


Blob = BlobFile | BlobBytes


def _descriptor(media_type: str, digest: str, size: int, annotations: dict[str, str]) -> dict[str, Any]:
    desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        desc["annotations"] = annotations
    return desc


@dataclass(frozen=True)
class Reference:
    """Where an artifact is: a layout directory (``location`` is its path, ``repository`` empty)
    or a registry (``location`` host[:port], ``repository`` the path below it)."""

    kind: str  # "layout" | "registry"
    location: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, uri: str) -> Reference:
        rest = uri.removeprefix("oci://")
        kind = "layout" if rest.startswith("oci-layout://") else "registry"
        rest = rest.removeprefix("oci-layout://")
        digest = None
        if "@" in rest:
            rest, digest = rest.rsplit("@", 1)
        tag = None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, tag = rest.rsplit(":", 1)
        if kind == "layout":
            return cls("layout", rest, "", tag, digest)
        host, _, repository = rest.partition("/")
        if not host or not repository:
            raise OciError(f"{uri!r} is not an OCI reference (registry/repository[:tag][@digest])")
        return cls("registry", host, repository, tag, digest)

    def __str__(self) -> str:
        base = f"oci-layout://{self.location}" if self.kind == "layout" else f"{self.location}/{self.repository}"
        return base + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def pinned(self, digest: str) -> Reference:
        """The same artifact named by its digest only (what a deployment should point at)."""
        return Reference(self.kind, self.location, self.repository, None, digest)


class OciStore(Protocol):
    def push(
        self,
        repository: str,
        tag: str,
        blobs: Sequence[Blob],
        manifest: bytes,
        media_type: str,
        artifact_type: str | None = None,
    ) -> Reference:
        """Store the blobs and the manifest (exact bytes) under ``repository:tag``
        (``artifact_type``: also named in a layout's index entry)."""
        ...

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        """The manifest bytes (verified against ``ref.digest`` when set) and their media type."""
        ...

    def fetch_blob(self, ref: Reference, digest: str, dest: Path) -> None:
        """Write the blob to ``dest``, verified against ``digest``."""
        ...


def _manifest_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _verify_manifest(ref: Reference, data: bytes) -> None:
    if ref.digest and _manifest_digest(data) != ref.digest:
        raise DigestMismatch(f"{ref}: the manifest's digest is {_manifest_digest(data)}, not {ref.digest}")


def _stage(source: Iterator[bytes], digest: str | None, dest: Path) -> Path:
    """Write into a temporary file next to ``dest`` (checked against ``digest`` when given) and
    return it; the caller renames it into place, or removes it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in source:
                hasher.update(chunk)
                out.write(chunk)
        got = "sha256:" + hasher.hexdigest()
        if digest is not None and got != digest:
            raise DigestMismatch(f"blob {digest} hashed to {got}")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _copy_verified(source: Iterator[bytes], digest: str, dest: Path) -> None:
    """Stream into a temporary file next to ``dest``, renamed into place only if it hashes right."""
    tmp = _stage(source, digest, dest)
    try:
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


# --- embedded: OCI image layouts on disk -------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FSYNC_POOL: ThreadPoolExecutor | None = None
_FSYNC_POOL_LOCK = threading.Lock()


def _fsync_files(paths: list[Path]) -> None:
    """fsync several new files at once: the filesystem's journal commits them together, so
    this costs about one fsync instead of one per file (docs/performance.md, release service)."""
    global _FSYNC_POOL
    if len(paths) <= 1:
        for path in paths:
            _fsync(path)
        return
    with _FSYNC_POOL_LOCK:
        if _FSYNC_POOL is None:
            _FSYNC_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="oci-fsync")
    for future in [_FSYNC_POOL.submit(_fsync, p) for p in paths]:
        future.result()


class LayoutStore:
    """One OCI image layout per repository under ``root``; safe across processes (the index
    is replaced atomically under a lock, blobs appear by rename once complete).

    ``fsync``: blobs and the index are durable before they become visible, so a power loss
    never leaves a tag pointing at a missing blob (the release service's setting
    ``FORGE_OCI_LAYOUT_FSYNC``); without it a process crash is still safe."""

    def __init__(self, root: Path, fsync: bool = False) -> None:
        self.root = root.resolve()
        self.fsync = fsync

    def push(
        self,
        repository: str,
        tag: str,
        blobs: Sequence[Blob],
        manifest: bytes,
        media_type: str,
        artifact_type: str | None = None,
    ) -> Reference:
        layout = self.root / repository
        target = layout / "blobs" / "sha256"
        target.mkdir(parents=True, exist_ok=True)
        digest = _manifest_digest(manifest)
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(manifest)}
        entry["annotations"] = {REF_NAME: tag}
        if artifact_type:
            entry["artifactType"] = artifact_type
        staged: list[tuple[Path, Path]] = []
        try:
            marker = layout / "oci-layout"
            if not marker.exists():
                staged.append((_stage(iter([b'{"imageLayoutVersion":"1.0.0"}']), None, marker), marker))
            contents = [(b.digest, b.chunks()) for b in blobs] + [(digest, iter([manifest]))]
            for blob_digest, chunks in contents:
                dest = target / blob_digest.removeprefix("sha256:")
                if not dest.exists() and all(d != dest for _, d in staged):
                    staged.append((_stage(chunks, blob_digest, dest), dest))
            with _locked(layout / ".index.lock"):
                self._commit(layout, staged, tag, entry)
        finally:
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return Reference("layout", str(layout), "", tag, digest)

    def _commit(self, layout: Path, staged: list[tuple[Path, Path]], tag: str, entry: dict[str, Any]) -> None:
        """Under the layout's lock: the staged files into place, then the index naming ``tag``,
        replaced last and atomically."""
        index_path = layout / "index.json"
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
        if index_path.exists():
            index = json.loads(index_path.read_bytes())
        entries = [m for m in index.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) != tag]
        index["manifests"] = [*entries, entry]
        index_tmp = _stage(iter([json.dumps(index, separators=(",", ":")).encode()]), None, index_path)
        staged.append((index_tmp, index_path))
        if self.fsync:
            _fsync_files([tmp for tmp, _ in staged])
        for tmp, dest in staged[:-1]:
            os.replace(tmp, dest)
        if self.fsync and len(staged) > 1:
            _fsync(layout / "blobs" / "sha256")
        os.replace(index_tmp, index_path)
        if self.fsync:
            _fsync(layout)

    @staticmethod
    def _layout(ref: Reference) -> Path:
        return Path(ref.location)

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        layout = self._layout(ref)
        try:
            index = json.loads((layout / "index.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise OciError(f"{layout} is not an OCI image layout: {exc}") from None
        for entry in index.get("manifests", []):
            named = (entry.get("annotations") or {}).get(REF_NAME)
            if (ref.digest and entry.get("digest") == ref.digest) or (not ref.digest and named == ref.tag):
                path = layout / "blobs" / "sha256" / str(entry["digest"]).removeprefix("sha256:")
                data = path.read_bytes()
                _verify_manifest(Reference(ref.kind, ref.location, "", None, str(entry["digest"])), data)
                _verify_manifest(ref, data)
                return data, str(entry.get("mediaType") or MANIFEST_MEDIA_TYPE)
        raise OciError(f"{ref}: no such manifest in {layout}")

    def fetch_blob(self, ref: Reference, digest: str, dest: Path) -> None:
        path = self._layout(ref) / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.is_file():
            raise OciError(f"{ref}: blob {digest} is missing")
        _copy_verified(_file_chunks(path), digest, dest)


# --- a registry, through oras-py --------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in ("localhost", "127.0.0.1", "[::1]")


def _timeout_adapter(timeout: float) -> Any:
    """An HTTP adapter giving every request ``timeout`` unless it names its own (oras sets none).
    requests comes with oras; both are imported only where a registry is used."""
    import requests
    from requests.adapters import HTTPAdapter

    class _TimeoutAdapter(HTTPAdapter):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    return _TimeoutAdapter()


class RegistryStore:
    """``registry`` is ``host[:port][/namespace]``; loopback registries are spoken to over HTTP.
    One oras client per thread (pushes run in worker threads, several at once)."""

    def __init__(
        self, registry: str, insecure: bool = False, username: str = "", password: str = "", timeout: float = 60.0
    ) -> None:
        self.registry = registry.rstrip("/")
        self.host, _, self.namespace = self.registry.partition("/")
        self.insecure = insecure or _is_loopback(self.host)
        self.username = username
        self.password = password
        self.timeout = timeout
        self._local = threading.local()

    def _oras(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import oras.provider

            class _Registry(oras.provider.Registry):  # type: ignore[misc]
                # oras retries for minutes with sleeps in between; our callers retry themselves.
                do_request = oras.provider.Registry.do_request.__wrapped__

            client = _Registry(hostname=self.host, insecure=self.insecure)
            adapter = _timeout_adapter(self.timeout)
            client.session.mount("http://", adapter)
            client.session.mount("https://", adapter)
            if self.username:
                client.auth.set_basic_auth(self.username, self.password)
            self._local.client = client
        return client

    def _container(self, repository: str, tag: str | None = None, *, full: bool = False) -> Any:
        import oras.container

        path = f"{self.namespace}/{repository}" if self.namespace and not full else repository
        suffix = "" if not tag else (f"@{tag}" if tag.startswith("sha256:") else f":{tag}")
        return oras.container.Container(f"{self.host}/{path}{suffix}", registry=self.host)

    def _check(self, resp: Any, what: str, ok: tuple[int, ...]) -> None:
        if resp.status_code not in ok:
            raise OciError(f"the registry {self.host} refused {what}: HTTP {resp.status_code} {resp.text[:300]}")

    def _upload(self, client: Any, container: Any, blob: Blob) -> None:
        head = client.do_request(f"{client.prefix}://{container.get_blob_url(blob.digest)}", "HEAD")
        if head.status_code == 200:
            return
        start = client.do_request(f"{client.prefix}://{container.upload_blob_url()}", "POST")
        self._check(start, f"a blob upload ({blob.digest})", (202,))
        location = client._get_location(start, container)
        if not location:
            raise OciError(f"the registry {self.host} started an upload without a Location")
        import oras.utils

        url = oras.utils.append_url_params(location, {"digest": blob.digest})
        with blob.open() as fh:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
            resp = client.session.put(url, data=fh, headers={**client.headers, **headers}, timeout=self.timeout)
        self._check(resp, f"blob {blob.digest}", (201,))

    def push(
        self,
        repository: str,
        tag: str,
        blobs: Sequence[Blob],
        manifest: bytes,
        media_type: str,
        artifact_type: str | None = None,
    ) -> Reference:
        """``artifact_type`` is the manifest's own field here (registries index it from there)."""
        client = self._oras()
        container = self._container(repository, tag)
        try:
            for blob in blobs:
                self._upload(client, container, blob)
            resp = client.do_request(
                f"{client.prefix}://{container.manifest_url()}",
                "PUT",
                data=manifest,
                headers={"Content-Type": media_type},
            )
        except OciError:
            raise
        except Exception as exc:
            raise OciError(f"the registry {self.host} is unreachable: {exc}") from exc
        self._check(resp, "the manifest", (200, 201))
        digest = _manifest_digest(manifest)
        stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatch(f"the registry {self.host} stored manifest {stored}, not {digest}")
        path = f"{self.namespace}/{repository}" if self.namespace else repository
        return Reference("registry", self.host, path, tag, digest)

    def fetch_manifest(self, ref: Reference) -> tuple[bytes, str]:
        client = self._oras()
        container = self._container(ref.repository, ref.digest or ref.tag, full=True)
        accept = ", ".join([*MANIFEST_MEDIA_TYPES, INDEX_MEDIA_TYPE])
        try:
            resp = client.do_request(f"{client.prefix}://{container.manifest_url()}", "GET", headers={"Accept": accept})
        except Exception as exc:
            raise OciError(f"the registry {self.host} is unreachable: {exc}") from exc
        self._check(resp, f"the manifest of {ref}", (200,))
        _verify_manifest(ref, resp.content)
        return resp.content, resp.headers.get("Content-Type", MANIFEST_MEDIA_TYPE).split(";")[0]

    def fetch_blob(self, ref: Reference, digest: str, dest: Path) -> None:
        client = self._oras()
        container = self._container(ref.repository, full=True)
        url = f"{client.prefix}://{container.get_blob_url(digest)}"
        try:
            with client.do_request(url, "GET", stream=True) as resp:
                self._check(resp, f"blob {digest}", (200,))
                _copy_verified(resp.iter_content(_CHUNK), digest, dest)
        except OciError:
            raise
        except Exception as exc:
            raise OciError(f"the registry {self.host} is unreachable: {exc}") from exc


def store_for(ref: Reference, insecure: bool = False, username: str = "", password: str = "") -> OciStore:
    """The store that holds ``ref`` (for pulls; a layout reference names its directory)."""
    if ref.kind == "layout":
        return LayoutStore(Path(ref.location).parent)
    return RegistryStore(ref.location, insecure, username, password)
