"""Write a single-layer OCI image layout with nothing but the Python standard library.

What a pipeline author without a container engine can run (docs/pipelines.md shows it): the
layer is a reproducible tar.gz of ``rootfs/``; the same input gives the same image digest.
Usage: ``python3 make_image.py ROOTFS_DIR OUTPUT_LAYOUT_DIR``.
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main(rootfs: Path, layout: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with path.open("rb") if path.is_file() else io.BytesIO() as fh:
                tar.addfile(info, fh if path.is_file() else None)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layout, compressed.getvalue())}
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(layout, json.dumps(config_doc).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    }
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(layout, json.dumps(manifest).encode())}
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    print(entry["digest"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
