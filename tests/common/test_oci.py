"""forge_common.oci: references, and the embedded store's push and verified pulls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from forge_common.oci import BlobFile, DigestMismatch, LayoutStore, Reference, sha256_file


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
