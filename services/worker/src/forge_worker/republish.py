"""Publish jobs: attach an artifact a run already built to a destination it was not published to
when it was built (``pipeline.publish.{run}.{publication}``; today the GitHub Release of a tag
pushed onto the run's commit afterwards). Nothing is rebuilt.

The artifact comes back from the tracking registry by its digest, every digest checked on the way
(:meth:`OciStore.fetch_manifest`, :meth:`OciStore.fetch_blob`):

* a binary or an archive is its single layer, under the file name the title annotation keeps;
* a container is written as an OCI image layout (``oci-layout``, ``index.json`` naming the
  manifest with the commit as its ref name, ``blobs/sha256/…``) in a reproducible tar
  (``{artifact}.oci.tar``: sorted, owner 0, mtime 0), so a redelivered job uploads the same bytes.

The asset is ``{project}-{file name}``, as a tag run's artifact job names it; publishing it again
finds it attached (same name and size) and answers its URL, so redeliveries are harmless.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import structlog

from forge_common.jobs import JobReply, PublishJob, PublishResult
from forge_common.oci import INDEX_MEDIA_TYPE, REF_NAME, TITLE, OciError, Reference, store_for

from .publish import Destinations, PublishError

__all__ = ["PublishJobRunner", "materialize"]

log = structlog.get_logger(__name__)

PublishReply = JobReply[PublishResult]


class PublishJobRunner:
    def __init__(
        self,
        destinations: Destinations,
        scratch_root: Path,
        oci_insecure: bool = False,
        oci_username: str = "",
        oci_password: str = "",
    ) -> None:
        self.destinations = destinations
        self.scratch_root = scratch_root
        self.oci = (oci_insecure, oci_username, oci_password)

    async def run(self, job: PublishJob) -> PublishReply:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="publish-", dir=self.scratch_root))
        what = f"artifact {job.name} of project {job.project}"
        try:
            try:
                file = await asyncio.to_thread(materialize, job, scratch, *self.oci)
            except (OciError, OSError, ValueError, KeyError) as exc:
                # The tracking registry down or the artifact gone: an infrastructure failure,
                # retried by redelivery (the handler naks it), dead-lettered at the last one.
                if "unreachable" in str(exc) or "HTTP 5" in str(exc):
                    raise
                return PublishReply(status="failed", error=f"{what}: cannot read the built artifact: {exc}")
            try:
                uri = await self.destinations.github_release(
                    job.repository, job.tag, f"{job.project}-{file.name}", file
                )
            except PublishError as exc:
                return PublishReply(status="failed", error=f"{what}: {exc}")
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        log.info("artifact.published_for_tag", run_id=job.run_id, artifact=job.name, tag=job.tag, uri=uri)
        return PublishReply(status="success", result=PublishResult(uri=uri))


def materialize(job: PublishJob, scratch: Path, insecure: bool = False, username: str = "", password: str = "") -> Path:
    """The artifact as one file in ``scratch``, read by digest from its tracking registry.
    Blocking: run it in a thread."""
    ref = Reference.parse(job.tracking_oci_uri).pinned(job.digest)
    store = store_for(ref, insecure, username, password)
    manifest, media_type = store.fetch_manifest(ref)
    parsed = json.loads(manifest)
    if job.type != "container":
        [layer] = parsed["layers"]
        name = Path(str((layer.get("annotations") or {}).get(TITLE) or job.name)).name
        dest = scratch / name
        store.fetch_blob(ref, str(layer["digest"]), dest)
        return dest
    layout = scratch / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for desc in [parsed["config"], *parsed.get("layers", [])]:
        store.fetch_blob(ref, str(desc["digest"]), blobs / str(desc["digest"]).removeprefix("sha256:"))
    (blobs / job.digest.removeprefix("sha256:")).write_bytes(manifest)
    entry = {"mediaType": media_type, "digest": job.digest, "size": len(manifest)}
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{**entry, "annotations": {REF_NAME: job.commit_sha}}],
    }
    (layout / "index.json").write_bytes(json.dumps(index, separators=(",", ":"), sort_keys=True).encode())
    (layout / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    packed = scratch / f"{job.name}.oci.tar"
    _reproducible_tar(layout, packed)
    return packed


def _reproducible_tar(source: Path, dest: Path) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False, filter=clean)
