"""``forge artifacts pull``: a release's artifact, fetched by digest and verified.

The release names each artifact's tracking reference and manifest digest. The manifest is
fetched by that digest and checked; every blob it names is checked against its own digest
before it is kept. A binary or archive is written as its one file; a container as an OCI image
layout directory (``oras``, ``skopeo`` and ``crane`` read it), tagged with the commit.

Registries are spoken to with oras-py (its session, token authentication and URL rules); the
embedded platform registry is an OCI image layout on this machine's disk, read directly.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .http import CliError
from .session import call

__all__ = ["pull"]

_CHUNK = 1024 * 1024
_MANIFESTS = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _split(uri: str) -> tuple[str, str, str]:
    """``(kind, location, repository)`` of a tracking reference, tag and digest dropped."""
    rest = uri.removeprefix("oci://").split("@", 1)[0]
    layout = rest.startswith("oci-layout://")
    rest = rest.removeprefix("oci-layout://")
    head, _, last = rest.rpartition("/")
    if ":" in last:
        rest = f"{head}/{last.split(':', 1)[0]}"
    if layout:
        return "layout", rest, ""
    host, _, repository = rest.partition("/")
    return "registry", host, repository


class _Source:
    def __init__(self, uri: str) -> None:
        self.kind, self.location, self.repository = _split(uri)
        self._client: Any = None

    def _registry(self) -> Any:
        if self._client is None:
            import oras.provider

            host = self.location.rsplit(":", 1)[0]
            insecure = host in ("localhost", "127.0.0.1", "[::1]") or os.environ.get("FORGE_OCI_INSECURE") == "true"
            self._client = oras.provider.Registry(hostname=self.location, insecure=insecure)
        return self._client

    def manifest(self, digest: str) -> bytes:
        if self.kind == "layout":
            path = Path(self.location) / "blobs" / "sha256" / digest.removeprefix("sha256:")
            try:
                return path.read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror}") from None
        client = self._registry()
        url = f"{client.prefix}://{self.location}/v2/{self.repository}/manifests/{digest}"
        resp = client.do_request(url, "GET", headers={"Accept": ", ".join(_MANIFESTS)})
        if resp.status_code != 200:
            raise CliError(f"the registry {self.location} answered {resp.status_code} for manifest {digest}")
        return bytes(resp.content)

    @contextlib.contextmanager
    def blob(self, digest: str) -> Iterator[Iterator[bytes]]:
        if self.kind == "layout":
            path = Path(self.location) / "blobs" / "sha256" / digest.removeprefix("sha256:")
            try:
                fh = path.open("rb")
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror}") from None
            with fh:
                yield iter(lambda: fh.read(_CHUNK), b"")
            return
        client = self._registry()
        url = f"{client.prefix}://{self.location}/v2/{self.repository}/blobs/{digest}"
        with client.do_request(url, "GET", stream=True) as resp:
            if resp.status_code != 200:
                raise CliError(f"the registry {self.location} answered {resp.status_code} for blob {digest}")
            yield resp.iter_content(_CHUNK)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _save_verified(chunks: Iterator[bytes], digest: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            raise CliError(f"blob {digest} arrived as sha256:{hasher.hexdigest()}: refusing to write it")
        # mkstemp makes the file 0600; a pulled artifact gets the mode any new file gets (umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_layout(source: _Source, manifest: bytes, digest: str, tag: str, dest: Path) -> None:
    parsed = json.loads(manifest)
    blobs = dest / "blobs" / "sha256"
    for desc in [parsed["config"], *parsed.get("layers", [])]:
        with source.blob(desc["digest"]) as chunks:
            _save_verified(chunks, desc["digest"], blobs / str(desc["digest"]).removeprefix("sha256:"))
    _save_verified(iter([manifest]), digest, blobs / digest.removeprefix("sha256:"))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = {
        "mediaType": parsed.get("mediaType") or _MANIFESTS[0],
        "digest": digest,
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]}
    (dest / "index.json").write_text(json.dumps(index))


def pull(args: argparse.Namespace) -> int:
    release = call(
        args,
        "GET",
        f"/v1/releases/{quote(args.repository, safe='')}/{quote(args.project, safe='')}/{quote(args.release_id, safe='')}",
    )
    found = [a for a in release.get("artifacts") or [] if a.get("name") == args.artifact]
    if not found:
        names = ", ".join(a.get("name", "?") for a in release.get("artifacts") or []) or "none"
        raise CliError(f"release {release.get('release_number')} has no artifact {args.artifact!r} (it has: {names})")
    artifact = found[0]
    digest = artifact.get("digest")
    if not digest:
        raise CliError(f"artifact {args.artifact!r} has no recorded digest, so it cannot be verified")
    source = _Source(str(artifact["tracking_oci_uri"]))
    manifest = source.manifest(digest)
    if _digest_of(manifest) != digest:
        raise CliError(f"the manifest of {args.artifact!r} hashes to {_digest_of(manifest)}, not {digest}")
    dest = Path(args.path)
    if artifact.get("type") == "container":
        _write_layout(source, manifest, digest, str(release.get("commit_sha") or "latest"), dest)
    else:
        layers = json.loads(manifest).get("layers") or []
        if len(layers) != 1:
            raise CliError(f"artifact {args.artifact!r} should have one layer, its manifest has {len(layers)}")
        with source.blob(layers[0]["digest"]) as chunks:
            _save_verified(chunks, layers[0]["digest"], dest)
    print(f"{args.artifact} {digest} -> {dest}")
    return 0
