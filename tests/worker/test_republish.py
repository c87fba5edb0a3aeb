"""A built artifact read back from the tracking registry (the embedded OCI layout) by digest, as
a publish job does for a tag pushed after the build: a binary is its exact bytes under its file
name; a container is an OCI image layout tar naming the same manifest digest, the same bytes
each time (a redelivered job uploads the same asset)."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import pytest

from forge_common.jobs import PublishJob
from forge_common.oci import LayoutStore, OciError
from forge_worker.packaging import package
from forge_worker.republish import materialize
from tests.artifacts.make_image import main as make_image

SHA = "c" * 40


def _job(kind: str, tracking: str, digest: str, name: str) -> PublishJob:
    return PublishJob(
        job_id="p",
        run_id="r",
        repository="acme/shop",
        commit_sha=SHA,
        project="api",
        name=name,
        type=kind,  # type: ignore[arg-type]
        digest=digest,
        tracking_oci_uri=tracking,
        tag="v1.0.0",
    )


def _push(tmp_path: Path, kind: str, name: str, product: Path) -> tuple[str, str]:
    scratch = tmp_path / f"scratch-{name}"
    scratch.mkdir()
    packaged = package(kind, name, product, scratch)
    ref = LayoutStore(tmp_path / "oci").push(
        f"acme/shop/api/{name}", SHA, packaged.blobs, packaged.manifest, packaged.media_type
    )
    assert ref.digest is not None
    return str(dataclasses.replace(ref, digest=None)), ref.digest


def test_a_binary_comes_back_byte_for_byte(tmp_path: Path) -> None:
    binary = tmp_path / "shopctl"
    binary.write_bytes(b"\x7fELF shopctl\n")
    tracking, digest = _push(tmp_path, "binary", "cli", binary)
    out = tmp_path / "out"
    out.mkdir()

    file = materialize(_job("binary", tracking, digest, "cli"), out)

    assert (file.name, file.read_bytes()) == ("shopctl", b"\x7fELF shopctl\n")


def test_a_container_comes_back_as_a_reproducible_layout_tar_of_the_same_manifest(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello.txt").write_text("hello\n")
    make_image(rootfs, tmp_path / "image.oci")
    tracking, digest = _push(tmp_path, "container", "image", tmp_path / "image.oci")
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()

    one = materialize(_job("container", tracking, digest, "image"), first)
    two = materialize(_job("container", tracking, digest, "image"), second)

    assert one.name == "image.oci.tar"
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        [entry] = index["manifests"]
        assert entry["digest"] == digest
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == SHA
        assert f"blobs/sha256/{digest.removeprefix('sha256:')}" in tar.getnames()


def test_a_digest_the_registry_does_not_hold_is_an_error(tmp_path: Path) -> None:
    binary = tmp_path / "cli"
    binary.write_bytes(b"x")
    tracking, _ = _push(tmp_path, "binary", "cli", binary)

    with pytest.raises(OciError, match="no such manifest"):
        materialize(_job("binary", tracking, "sha256:" + "1" * 64, "cli"), tmp_path)
