"""What a build left behind, as an OCI artifact: blobs in files and the exact manifest bytes.

* ``container``: an OCI image layout directory, or a tarball of one, or a docker-archive
  tarball (converted with skopeo when it is installed). The image is pushed unchanged, so its
  manifest digest is the build's.
* ``binary``: one file, the single layer of an OCI artifact (``artifactType``
  :data:`BINARY_TYPE`) whose title annotation is the file name.
* ``archive``: a file as is, or a directory packed as a reproducible ``.tar.gz`` (sorted,
  owner 0, mtime 0), the single layer of an :data:`ARCHIVE_TYPE` artifact.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge_common.oci import (
    EMPTY_CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPES,
    REF_NAME,
    TITLE,
    BlobFile,
)

__all__ = ["ARCHIVE_TYPE", "BINARY_TYPE", "PackageError", "Packaged", "package"]

BINARY_TYPE = "application/vnd.forge.artifact.binary.v1"
ARCHIVE_TYPE = "application/vnd.forge.artifact.archive.v1"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class PackageError(Exception):
    """The build's output is not what its type needs; the message says what is wrong."""


@dataclass
class Packaged:
    blobs: list[BlobFile]
    manifest: bytes
    media_type: str
    size: int  # bytes of content: the file, or the image's config and layers
    # One file holding the whole artifact, for destinations that store files (S3, GitHub).
    file: Path
    file_name: str


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _single_layer(name: str, artifact_type: str, layer: BlobFile, scratch: Path, file_name: str) -> Packaged:
    empty = scratch / "empty.json"
    empty.write_bytes(b"{}")
    config = BlobFile.of(empty, EMPTY_CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "annotations": {TITLE: name},
    }
    return Packaged([config, layer], _canonical(manifest), MANIFEST_MEDIA_TYPE, layer.size, layer.path, file_name)


def _reproducible_tar_gz(source: Path, dest: Path) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with dest.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(source.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(source)), recursive=False, filter=clean)


def _layout_of(product: Path, scratch: Path) -> Path:
    """The OCI image layout directory a container build left (unpacking a tarball if needed)."""
    if product.is_dir():
        if not (product / "index.json").is_file():
            raise PackageError(f"{product.name} is a directory but not an OCI image layout (no index.json)")
        return product
    unpacked = scratch / "image"
    unpacked.mkdir()
    try:
        with tarfile.open(product) as tar:
            tar.extractall(unpacked, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise PackageError(f"{product.name} is neither an OCI image layout nor a tarball: {exc}") from None
    if (unpacked / "index.json").is_file():
        return unpacked
    if (unpacked / "manifest.json").is_file():
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            raise PackageError(f"{product.name} is a docker-archive; converting it needs skopeo, not installed here")
        layout = scratch / "converted"
        proc = subprocess.run(
            [skopeo, "copy", "-q", f"docker-archive:{product}", f"oci:{layout}:image"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise PackageError(f"skopeo could not read {product.name}: {proc.stderr.strip()[:300]}")
        return layout
    raise PackageError(f"{product.name} holds neither an OCI image layout (index.json) nor a docker-archive")


def _container(name: str, product: Path, scratch: Path) -> Packaged:
    layout = _layout_of(product, scratch)
    index = json.loads((layout / "index.json").read_bytes())
    entries = index.get("manifests") or []
    if len(entries) != 1:
        tagged = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME)]
        entries = tagged if len(tagged) == 1 else entries
    if len(entries) != 1:
        raise PackageError(f"the image layout at {product.name} holds {len(entries)} manifests; leave exactly one")
    entry = entries[0]
    if entry.get("mediaType") == INDEX_MEDIA_TYPE:
        raise PackageError(f"{product.name} is a multi-platform image index; build a single-platform image")
    blobs_dir = layout / "blobs" / "sha256"
    manifest = (blobs_dir / str(entry["digest"]).removeprefix("sha256:")).read_bytes()
    parsed = json.loads(manifest)
    media_type = str(parsed.get("mediaType") or entry.get("mediaType") or MANIFEST_MEDIA_TYPE)
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise PackageError(f"{product.name}: unsupported manifest media type {media_type!r}")
    blobs = []
    for desc in [parsed["config"], *parsed.get("layers", [])]:
        path = blobs_dir / str(desc["digest"]).removeprefix("sha256:")
        if not path.is_file():
            raise PackageError(f"{product.name}: blob {desc['digest']} named by the manifest is missing")
        blobs.append(BlobFile(path, str(desc["mediaType"]), str(desc["digest"]), int(desc["size"])))
    packed = scratch / f"{name}.oci.tar"
    with tarfile.open(packed, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return Packaged(blobs, manifest, media_type, sum(b.size for b in blobs), packed, packed.name)


def package(kind: str, name: str, product: Path, scratch: Path) -> Packaged:
    """Blocking (hashing, tar): run it in a thread."""
    if not product.exists():
        raise PackageError("the build left nothing there")
    if kind == "container":
        return _container(name, product, scratch)
    if kind == "binary":
        if not product.is_file():
            raise PackageError("a binary artifact must be one file, and this is a directory")
        layer = BlobFile.of(product, "application/octet-stream", {TITLE: product.name})
        return _single_layer(name, BINARY_TYPE, layer, scratch, product.name)
    if product.is_dir():
        packed = scratch / f"{name}.tar.gz"
        _reproducible_tar_gz(product, packed)
        layer = BlobFile.of(packed, TAR_GZIP, {TITLE: packed.name})
        return _single_layer(name, ARCHIVE_TYPE, layer, scratch, packed.name)
    gzipped = product.name.endswith((".tar.gz", ".tgz"))
    layer = BlobFile.of(product, TAR_GZIP if gzipped else "application/octet-stream", {TITLE: product.name})
    return _single_layer(name, ARCHIVE_TYPE, layer, scratch, product.name)
