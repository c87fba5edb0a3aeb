"""forge_common.oci: references, and the embedded store's push and verified pulls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from forge_common.oci import BlobBytes, BlobFile, DigestMismatch, LayoutStore, Reference, sha256_file


def test_references_parse_and_pin() -> None:
    ref = Reference.parse("127.0.0.1:5000/acme/shop/api/cli:0123abc")
    assert (ref.kind, ref.location, ref.repository, ref.tag) == (
        "registry",
        "127.0.0.1:5000",
        "acme/shop/api/cli",
        "0123abc",
    )
    digest = "sha256:" + "a" * 64
    assert str(ref.pinned(digest)) == f"127.0.0.1:5000/acme/shop/api/cli@{digest}"
    layout = Reference.parse(f"oci-layout:///srv/oci/acme/shop/api/cli:0123abc@{digest}")
    assert (layout.kind, layout.location, layout.tag, layout.digest) == (
        "layout",
        "/srv/oci/acme/shop/api/cli",
        "0123abc",
        digest,
    )
    assert str(layout) == f"oci-layout:///srv/oci/acme/shop/api/cli:0123abc@{digest}"


def _push(tmp_path: Path) -> tuple[LayoutStore, Reference, BlobFile]:
    content = tmp_path / "cli"
    content.write_bytes(b"a binary")
    blob = BlobFile.of(content, "application/octet-stream")
    manifest = json.dumps({"schemaVersion": 2, "layers": [blob.descriptor()]}).encode()
    store = LayoutStore(tmp_path / "oci")
    return (
        store,
        store.push("acme/shop/api/cli", "v1", [blob], manifest, "application/vnd.oci.image.manifest.v1+json"),
        blob,
    )


def test_layout_push_then_pull_by_digest(tmp_path: Path) -> None:
    store, ref, blob = _push(tmp_path)
    assert ref.digest is not None
    data, media_type = store.fetch_manifest(ref.pinned(ref.digest))
    assert "sha256:" + hashlib.sha256(data).hexdigest() == ref.digest
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    out = tmp_path / "pulled"
    store.fetch_blob(ref, blob.digest, out)
    assert out.read_bytes() == b"a binary"
    assert sha256_file(out) == blob.digest


def test_a_tampered_blob_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    store, ref, blob = _push(tmp_path)
    stored = Path(ref.location) / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
    stored.write_bytes(b"something else")
    out = tmp_path / "pulled"
    with pytest.raises(DigestMismatch):
        store.fetch_blob(ref, blob.digest, out)
    assert not out.exists()


@pytest.mark.parametrize("fsync", [True, False])
def test_in_memory_blobs_land_like_files_and_a_tag_moves(tmp_path: Path, fsync: bool) -> None:
    """The release service's publish: small blobs from memory, the artifact type in the index,
    a second push of the same tag replacing the first (a retried create converges)."""
    store = LayoutStore(tmp_path / "oci", fsync=fsync)
    manifests = []
    for text in (b"first", b"second"):
        layer = BlobBytes(text, "application/json", {"org.opencontainers.image.title": "release.json"})
        manifest = json.dumps({"schemaVersion": 2, "layers": [layer.descriptor()]}).encode()
        manifests.append(manifest)
        ref = store.push("acme/shop/api", "abc", [layer], manifest, "application/vnd.oci.image.manifest.v1+json", "x/y")
    layout = tmp_path / "oci" / "acme" / "shop" / "api"
    index = json.loads((layout / "index.json").read_bytes())["manifests"]
    assert len(index) == 1
    assert index[0]["artifactType"] == "x/y"
    assert index[0]["digest"] == ref.digest == "sha256:" + hashlib.sha256(manifests[1]).hexdigest()
    out = tmp_path / "pulled"
    store.fetch_blob(ref, "sha256:" + hashlib.sha256(b"second").hexdigest(), out)
    assert out.read_bytes() == b"second"
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert not list(layout.rglob("*.part"))  # no temporary file left behind
