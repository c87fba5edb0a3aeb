"""The published OCI artifact, read back with the OCI client (oras): from the embedded image
layout, and from a real registry (Debian's docker-registry, on loopback) when it is installed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import oras.container
import oras.layout
import oras.provider
import pytest

from forge_dev.stack import Process, free_port, wait_http
from forge_dev.testing import Platform

from ._support import Api, artifact, names, release_body, sha

REGISTRY_BINARY = shutil.which("docker-registry")
needs_registry = pytest.mark.skipif(
    REGISTRY_BINARY is None, reason="Debian's docker-registry is not installed (apt-get install docker-registry)"
)


def _expected_document(got: dict[str, Any]) -> dict[str, Any]:
    """release.json: the Get Release shape without the mutable aliases and the OCI fields."""
    return {
        "id": got["id"],
        "repository": got["repository"],
        "project": got["project"],
        "commit_sha": got["commit_sha"],
        "canonical_id": f"{got['repository']}/{got['project']}/{got['commit_sha']}",
        "release_number": got["release_number"],
        "pipeline_run_id": got["pipeline_run_id"],
        "created_at": got["created_at"],
        "created_by": got["created_by"],
        "trigger": got["trigger"],
        # digest and size are in the document only when the release recorded them
        "artifacts": [{k: v for k, v in a.items() if v is not None} for a in got["artifacts"]],
    }


async def test_embedded_layout_holds_the_release_with_its_digest(developer: Api, platform: Platform) -> None:
    repo, project = names()
    commit = sha()
    body = release_body(
        repo,
        project,
        commit,
        artifacts=[artifact("api", "container"), artifact("cli", "binary")],
        trigger={"trigger_type": "tag", "tag": "v1.4.0"},
    )
    created = (await developer.create(body)).json()
    other = (await developer.create(release_body(repo, project))).json()
    got = (await developer.get(f"/v1/releases/{created['id']}")).json()

    layout_dir = platform.data_dir / "oci" / repo.lower() / project.lower()
    assert created["oci_uri"] == f"oci-layout://{layout_dir}:{commit}"
    layout = oras.layout.Layout(str(layout_dir))  # validates oci-layout, index.json and blobs/
    index = json.loads((layout_dir / "index.json").read_bytes())
    refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    assert set(refs) == {commit, other["canonical_id"].rsplit("/", 1)[1]}
    assert refs[commit]["digest"] == created["oci_digest"] == got["oci_digest"]

    layer_digest, config_digest, manifest_digest = layout.get_ordered_blobs(tag=commit)
    manifest_bytes = layout.digest_to_blob_path(manifest_digest).read_bytes()
    assert manifest_digest == created["oci_digest"]
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == created["oci_digest"]
    assert refs[commit]["size"] == len(manifest_bytes)

    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == "application/vnd.forge.release.v1"
    assert manifest["annotations"]["org.opencontainers.image.revision"] == commit
    assert manifest["annotations"]["org.opencontainers.image.version"] == "1"
    assert manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] == "release.json"

    for digest in (layer_digest, config_digest):
        data = layout.digest_to_blob_path(digest).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    document = json.loads(layout.digest_to_blob_path(layer_digest).read_bytes())
    assert document == _expected_document(got)
    config = json.loads(layout.digest_to_blob_path(config_digest).read_bytes())
    assert config == {k: v for k, v in document.items() if k != "artifacts"}
    assert config["trigger"] == {
        "trigger_type": "tag",
        "branch": None,
        "tag": "v1.4.0",
        "triggered_by": developer.identity,
    }


# --- a real registry -------------------------------------------------------------------------


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REGISTRY_BINARY is not None
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        with (self.root / "registry.log").open("ab") as log:
            self.proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log)
        wait_http(f"http://{self.host}/v2/", 30, self.proc, "docker-registry")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> oras.provider.Registry:
        return oras.provider.Registry(hostname=self.host, insecure=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def registry_release(platform: Platform, registry: Registry) -> Iterator[Process]:
    """A release service instance that publishes to the registry (same database as the rest)."""
    proc = platform.start_process("release", env={"FORGE_OCI_REGISTRY": f"{registry.host}/forge"})
    yield proc
    proc.stop()


@needs_registry
async def test_registry_publish_pulls_back_with_oras(
    platform: Platform, registry: Registry, registry_release: Process, developer: Api
) -> None:
    api = Api(developer.http, registry_release.url, developer.headers)
    repo, project = names()
    commit = sha()
    resp = await api.create(
        release_body(repo, project, commit, trigger={"trigger_type": "branch_push", "branch": "main"})
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    target = f"{registry.host}/forge/{repo.lower()}/{project.lower()}:{commit}"
    assert created["oci_uri"] == target
    got = (await developer.get(f"/v1/releases/{created['id']}")).json()

    def pull(outdir: str) -> tuple[bytes, str | None, list[str]]:
        client = registry.client()
        container = oras.container.Container(target)
        raw = client.do_request(
            f"http://{container.manifest_url()}",
            "GET",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        files = client.pull(target=target, outdir=outdir)
        return raw.content, raw.headers.get("Docker-Content-Digest"), files

    manifest_bytes, header_digest, files = await asyncio.to_thread(pull, str(platform.data_dir / f"pull-{commit}"))
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == created["oci_digest"]
    assert header_digest == created["oci_digest"]
    assert [Path(f).name for f in files] == ["release.json"]
    assert json.loads(Path(files[0]).read_bytes()) == _expected_document(got)


@needs_registry
async def test_registry_down_creates_nothing_and_the_retry_converges(
    platform: Platform, registry: Registry, registry_release: Process, developer: Api
) -> None:
    api = Api(developer.http, registry_release.url, developer.headers)
    repo, project = names()
    commit = sha()
    registry.stop()
    failed = await api.create(release_body(repo, project, commit))
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"]["code"] == "bad_gateway"
    # Nothing half-created: no release, no number used, no event.
    assert (await developer.get(f"/v1/releases/{repo}/{project}")).json()["total"] == 0
    assert (await developer.get(f"/v1/releases/{repo}/{project}/{commit}")).status_code == 404

    registry.start()  # (the module's other tests find it running again)
    retried = await api.create(release_body(repo, project, commit))
    assert retried.status_code == 201, retried.text
    assert retried.json()["release_number"] == 1


@needs_registry
async def test_embedded_layout_pushes_to_a_registry_with_oras(
    platform: Platform, registry: Registry, developer: Api
) -> None:
    """The embedded layout is a standard one: oras copies it to a registry unchanged."""
    repo, project = names()
    commit = sha()
    created = (await developer.create(release_body(repo, project, commit))).json()
    layout = oras.layout.Layout(str(platform.data_dir / "oci" / repo.lower() / project.lower()))
    target = f"{registry.host}/copy/{project.lower()}:{commit}"

    def copy_and_read() -> str | None:
        client = registry.client()
        layout.push_to_registry(client, target, tag=commit)
        head = client.do_request(
            f"http://{oras.container.Container(target).manifest_url()}",
            "HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        return head.headers.get("Docker-Content-Digest")

    assert await asyncio.to_thread(copy_and_read) == created["oci_digest"]


@pytest.mark.skipif(REGISTRY_BINARY is not None, reason="covered by the registry-down test")
async def test_unreachable_registry_is_a_clean_502(platform: Platform, developer: Api) -> None:
    port = free_port()  # nothing listens here
    proc = platform.start_process("release", env={"FORGE_OCI_REGISTRY": f"127.0.0.1:{port}"})
    try:
        api = Api(developer.http, proc.url, developer.headers)
        repo, project = names()
        resp = await api.create(release_body(repo, project))
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "bad_gateway"
        async with httpx.AsyncClient() as client:
            listing = await client.get(f"{proc.url}/v1/releases/{repo}/{project}", headers=developer.headers)
        assert listing.json()["total"] == 0
    finally:
        proc.stop()
