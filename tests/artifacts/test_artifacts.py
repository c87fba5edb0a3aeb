"""Artifacts end to end, through a gateway as a client drives them (issue 14).

A repository whose project declares a binary, an archive and a container artifact -> the run
succeeds with an ``artifacts`` phase -> one release listing the three artifacts with digests ->
``forge artifacts pull`` returns bytes whose sha256 is what the build produced and the layer
digest of the manifest the release's digest names, read back from the registry (or the layout
on disk) without Forge's code (the container: the same manifest digest, which skopeo reads from
the pulled layout and from the registry) -> deploy to dev -> the GitOps ``release.yaml`` lists
the three digest-pinned references. Once against the embedded platform registry (an OCI
layout on disk) and once against Debian's ``docker-registry`` on loopback when it is installed.

A tag run whose artifact is published to ``github-release`` (the run started by GitHub's signed
push of the tag, the GitHub API a local server speaking its releases and asset-upload API):
the tag's release is looked up, created, and the artifact's exact bytes uploaded to it, the
upload that GitHub first answers 502 retried; the run's artifact shows the asset's URL. A GitHub
that refuses the release (403) fails the run in phase ``artifacts``, naming the cause.

Failures: a build that exits 1, a ``path`` the build did not leave, a registry that refuses the
push and a build past its timeout each fail the run in phase ``artifacts``, with an error that
names the project, the artifact and the cause, and create no release.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from forge_common.s3 import S3
from forge_common.settings import CommonSettings, load
from forge_dev.stack import wait_http
from forge_dev.testing import Platform, wait_for_event
from tests.e2e.test_lifecycle import Lane, _deliver_push, _poll, _push
from tests.integrations.github_api import FakeGitHub
from tests.release.test_release_oci import REGISTRY_BINARY, Registry

pytestmark = pytest.mark.slow

DEVELOPER = "dana.dev@acme.io"
VIEWER = "vic.viewer@acme.io"
GITHUB_TOKEN = "ghs_artifacts_test"
TAG = "v1.4.0"
MAKE_IMAGE = (Path(__file__).parent / "make_image.py").read_text()

REPO_TOML = """
forge_version = "1"
[phases.test]
group = 1
"""


def _project(artifacts: str, release: bool = True) -> str:
    text = 'name = "api"\n[[phases.test.steps]]\nname = "unit"\nrun = "echo tests ok"\n' + artifacts
    return text + ('[release]\non = [{ branch = "main" }]\n' if release else "")


def _three_artifacts(s3_target: str) -> str:
    return f"""
[[artifacts]]
name = "cli"
type = "binary"
build = "mkdir -p dist && printf 'cli built at %s\\n' $FORGE_COMMIT_SHA > dist/cli"
path = "dist/cli"
[[artifacts]]
name = "site"
type = "archive"
build = "mkdir -p out/site && echo '<h1>hello</h1>' > out/site/index.html"
path = "out/site"
[[artifacts]]
name = "image"
type = "container"
build = "python3 ../../tools/make_image.py rootfs dist/image.oci"
path = "dist/image.oci"
publish = ["{s3_target}"]
"""


def _files(project_toml: str) -> dict[str, str]:
    return {
        ".forge/repo.toml": REPO_TOML,
        "services/api/.forge/project.toml": project_toml,
        "services/api/rootfs/hello.txt": "hello from the image\n",
        "tools/make_image.py": MAKE_IMAGE,
    }


def _forge(platform: Platform, gateway: str, *args: str) -> subprocess.CompletedProcess[str]:
    token = platform.headers(VIEWER, "viewer")["Authorization"].removeprefix("Bearer ")
    forge = Path(sys.executable).parent / "forge"
    return subprocess.run(
        [str(forge), *args, "--api", gateway, "--token", token],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


class ArtifactLane(Lane):
    def __init__(self, platform: Platform, root: Path, extra: dict[str, str]) -> None:
        super().__init__(platform, root)
        self.root = root
        self.env.update({"FORGE_OCI_LAYOUT_DIR": str(root / "oci"), **extra})


def _lane(platform: Platform, root: Path, extra: dict[str, str]) -> Iterator[tuple[ArtifactLane, str]]:
    lane = ArtifactLane(platform, root, extra)
    try:
        yield lane, lane.start()
    finally:
        lane.close()


@pytest.fixture(scope="module")
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=GITHUB_TOKEN).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(scope="module")
def embedded(
    platform: Platform, github: FakeGitHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ArtifactLane, str]]:
    # GitHub is the local fake (the pipeline's commit statuses go there too)
    extra = {"FORGE_GITHUB_API_URL": github.url, "FORGE_GITHUB_TOKEN": GITHUB_TOKEN}
    yield from _lane(platform, tmp_path_factory.mktemp("embedded"), extra)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if REGISTRY_BINARY is None:
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def registry_lane(
    platform: Platform, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ArtifactLane, str]]:
    yield from _lane(platform, tmp_path_factory.mktemp("registry-lane"), {"FORGE_OCI_REGISTRY": registry.host})


async def _run(lane: ArtifactLane, gateway: str, repository: str, files: dict[str, str]) -> tuple[str, dict[str, Any]]:
    sha = _push(lane.repos, repository, files)
    developer = lane.platform.headers(DEVELOPER, "developer")
    viewer = lane.platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        body = {"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "manual"}
        resp = await client.post("/v1/runs", json=body, headers=developer)
        assert resp.status_code == 201, resp.text
        run = await _poll(
            client,
            f"/v1/runs/{resp.json()['id']}",
            viewer,
            lambda r: r["status"] in ("success", "failed", "cancelled"),
            240,
        )
    return sha, run


async def _check_release_flow(
    platform: Platform, lane: ArtifactLane, gateway: str, repository: str, tmp_path: Path
) -> dict[str, Any]:
    """The whole flow of the issue's Done-when; the run's artifacts by name."""
    s3 = S3.from_settings(load(CommonSettings, platform.env()))
    s3_target = f"s3://{s3.bucket}/published-{lane.tag}"
    sha, run = await _run(lane, gateway, repository, _files(_project(_three_artifacts(s3_target))))
    assert run["status"] == "success", f"{run}\n{lane.log_tails()}"
    assert [(p["name"], p["status"]) for p in run["phases"]] == [("test", "success"), ("artifacts", "success")]
    [task] = run["phases"][1]["tasks"]
    assert task["project_name"] == "api"
    assert sorted(s["name"] for s in task["steps"]) == ["cli", "image", "site"]
    by_name = {a["name"]: a for a in run["artifacts"]}
    assert {(a["name"], a["type"], a["status"]) for a in run["artifacts"]} == {
        ("cli", "binary", "success"),
        ("site", "archive", "success"),
        ("image", "container", "success"),
    }
    assert all(a["digest"].startswith("sha256:") and a["size"] > 0 for a in run["artifacts"])
    assert by_name["cli"]["tracking_oci_uri"].endswith(f"/{repository}/api/cli:{sha}".lower())

    # the container was also published to S3, as its OCI layout in a tar
    [published] = by_name["image"]["published_uris"]
    key = published.removeprefix(f"s3://{s3.bucket}/")
    async with s3.client() as client:
        head = await client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] > 0
    assert by_name["image"]["primary_published_uri"] == published

    # the worker's release job lists the three artifacts, with the run's digests
    try:
        created = await wait_for_event(
            platform, "release.created", lambda e: e["data"]["repository"] == repository, timeout=120
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lane.log_tails()}") from None
    viewer = platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        release = (await client.get(f"/v1/releases/{repository}/api/{sha}", headers=viewer)).json()
    assert release["id"] == created["data"]["release_id"]
    assert {a["name"]: a["digest"] for a in release["artifacts"]} == {n: a["digest"] for n, a in by_name.items()}

    shown = _forge(platform, gateway, "releases", "get", repository, "api", sha[:12], "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert {a["name"] for a in json.loads(shown.stdout)["artifacts"]} == {"cli", "site", "image"}

    await _check_pulls(platform, gateway, repository, sha, by_name, tmp_path)
    await _check_deploy(platform, gateway, repository, release, by_name, tmp_path)
    return by_name


def _tracked_manifest(artifact: dict[str, Any]) -> dict[str, Any]:
    """The manifest the platform registry holds under the artifact's digest, read without Forge's
    code: the blob file of the OCI layout (embedded default), or the registry's HTTP API."""
    location = artifact["tracking_oci_uri"].rsplit(":", 1)[0]  # without the commit tag
    digest = artifact["digest"]
    if location.startswith("oci-layout://"):
        blob = Path(location.removeprefix("oci-layout://")) / "blobs" / "sha256" / digest.removeprefix("sha256:")
        raw = blob.read_bytes()
    else:
        host, _, name = location.partition("/")
        accept = "application/vnd.oci.image.manifest.v1+json"
        resp = httpx.get(f"http://{host}/v2/{name}/manifests/{digest}", headers={"Accept": accept}, timeout=30)
        assert resp.status_code == 200, resp.text
        raw = resp.content
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    manifest: dict[str, Any] = json.loads(raw)
    return manifest


async def _check_pulls(
    platform: Platform, gateway: str, repository: str, sha: str, by_name: dict[str, Any], tmp_path: Path
) -> None:
    # binary: exactly the bytes the build wrote, the one layer of the artifact the release names
    cli = tmp_path / "pulled" / "cli"
    pulled = await asyncio.to_thread(
        _forge, platform, gateway, "artifacts", "pull", repository, "api", "1", "cli", "-o", str(cli)
    )
    assert pulled.returncode == 0, pulled.stderr
    assert cli.read_bytes() == f"cli built at {sha}\n".encode()
    manifest = _tracked_manifest(by_name["cli"])
    assert manifest["artifactType"] == "application/vnd.forge.artifact.binary.v1"
    assert [layer["digest"] for layer in manifest["layers"]] == [_sha256(cli)]
    assert manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] == "cli"
    umask = os.umask(0o022)
    os.umask(umask)
    assert cli.stat().st_mode & 0o777 == 0o666 & ~umask, "a pulled file gets the usual mode, not mkstemp's 0600"

    # archive: the directory, packed as a tar.gz
    site = tmp_path / "pulled" / "site.tar.gz"
    pulled = await asyncio.to_thread(
        _forge, platform, gateway, "artifacts", "pull", repository, "api", sha, "site", "-o", str(site)
    )
    assert pulled.returncode == 0, pulled.stderr
    with tarfile.open(site) as tar:
        member = tar.extractfile("index.html")
        assert member is not None
        assert member.read() == b"<h1>hello</h1>\n"
    manifest = _tracked_manifest(by_name["site"])
    assert manifest["artifactType"] == "application/vnd.forge.artifact.archive.v1"
    assert [layer["digest"] for layer in manifest["layers"]] == [_sha256(site)]

    # container: the image the build made (built here again from the same input: same digest)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello.txt").write_text("hello from the image\n")
    local = tmp_path / "local.oci"
    made = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "make_image.py"), str(rootfs), str(local)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert by_name["image"]["digest"] == made.stdout.strip()
    image = tmp_path / "pulled" / "image"
    pulled = await asyncio.to_thread(
        _forge, platform, gateway, "artifacts", "pull", repository, "api", "1", "image", "-o", str(image)
    )
    assert pulled.returncode == 0, pulled.stderr
    index = json.loads((image / "index.json").read_text())
    assert index["manifests"][0]["digest"] == by_name["image"]["digest"]
    assert _tracked_manifest(by_name["image"])["layers"], "the registry holds the image under the build's digest"
    skopeo = shutil.which("skopeo")
    if skopeo is not None:
        raw = subprocess.run(
            [skopeo, "inspect", "--raw", f"oci:{image}:{sha}"], capture_output=True, check=True, timeout=60
        ).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == by_name["image"]["digest"]


async def _check_deploy(
    platform: Platform, gateway: str, repository: str, release: dict[str, Any], by_name: dict[str, Any], tmp_path: Path
) -> None:
    developer = platform.headers(DEVELOPER, "developer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        resp = await client.post(
            "/v1/deployments", json={"release_id": release["id"], "environment": "dev"}, headers=developer
        )
        assert resp.status_code == 201, resp.text
    checkout = tmp_path / "gitops"
    subprocess.run(["git", "clone", "-q", platform.env()["FORGE_GITOPS_URL"], str(checkout)], check=True)
    pointer = yaml.safe_load((checkout / f"environments/dev/{repository.lower()}/api/release.yaml").read_text())
    listed = {a["name"]: a for a in pointer["spec"]["artifacts"]}
    assert set(listed) == {"cli", "site", "image"}
    for name, artifact in by_name.items():
        assert listed[name]["digest"] == artifact["digest"]
        tracked = artifact["tracking_oci_uri"].rsplit(":", 1)[0]
        assert listed[name]["reference"] == f"{tracked}@{artifact['digest']}"


async def test_three_artifacts_with_the_embedded_registry(
    platform: Platform, embedded: tuple[ArtifactLane, str], tmp_path: Path
) -> None:
    lane, gateway = embedded
    await _check_release_flow(platform, lane, gateway, f"acme{lane.tag}/shop", tmp_path)


async def test_three_artifacts_with_a_real_registry(
    platform: Platform, registry_lane: tuple[ArtifactLane, str], registry: Registry, tmp_path: Path
) -> None:
    lane, gateway = registry_lane
    by_name = await _check_release_flow(platform, lane, gateway, f"acme{lane.tag}/shop", tmp_path)
    # the tracking artifacts are in the registry, where oras-py (and any OCI client) reads them
    tags = await asyncio.to_thread(registry.client().get_tags, f"{registry.host}/acme{lane.tag}/shop/api/image")
    assert len(tags) == 1
    skopeo = shutil.which("skopeo")
    if skopeo is not None:  # the container, read from the registry by another client, is the build's
        digest = by_name["image"]["digest"]
        reference = f"docker://{registry.host}/acme{lane.tag}/shop/api/image@{digest}"
        raw = subprocess.run(
            [skopeo, "inspect", "--raw", "--tls-verify=false", reference], capture_output=True, check=True, timeout=60
        ).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest


FAILURES = {
    "exit": ('build = "echo compiling; exit 1"\npath = "dist/x"', "the build failed with exit code 1"),
    "missing": ('build = "echo nothing written"\npath = "dist/x"', "path 'dist/x': the build left nothing there"),
    "timeout": ('build = "sleep 60"\npath = "dist/x"\ntimeout = "2s"', "the build timed out after 2s"),
}


async def _expect_failure(lane: ArtifactLane, gateway: str, repository: str, declaration: str, cause: str) -> None:
    artifacts = f'[[artifacts]]\nname = "broken"\ntype = "binary"\n{declaration}\n'
    artifacts += '[[artifacts]]\nname = "fine"\ntype = "binary"\nbuild = "mkdir -p d && echo ok > d/f"\npath = "d/f"\n'
    _, run = await _run(lane, gateway, repository, _files(_project(artifacts)))
    assert run["status"] == "failed", f"{run}\n{lane.log_tails()}"
    assert run["failed_phase"] == "artifacts"
    for part in ("task api of phase artifacts failed", "artifact broken", cause):
        assert part in run["error"], run["error"]
    states = {a["name"]: a["status"] for a in run["artifacts"]}
    # the other artifact still reports its own outcome
    assert states == {"broken": "failed", "fine": "success"}
    viewer = lane.platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=30.0) as client:
        listing = await client.get(f"/v1/releases/{repository}/api", headers=viewer)
    assert listing.status_code in (200, 404)
    assert listing.status_code == 404 or listing.json()["total"] == 0


@pytest.mark.parametrize("case", sorted(FAILURES))
async def test_a_failed_artifact_fails_the_run_without_a_release(embedded: tuple[ArtifactLane, str], case: str) -> None:
    lane, gateway = embedded
    declaration, cause = FAILURES[case]
    await _expect_failure(lane, gateway, f"acme{lane.tag}/fail-{case}", declaration, cause)


class ReadOnlyRegistry(Registry):
    """Debian's docker-registry in maintenance (read-only) mode: it refuses every push."""

    def start(self) -> None:
        assert REGISTRY_BINARY is not None
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  maintenance:\n    readonly:\n      enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        with (self.root / "registry.log").open("ab") as log:
            self.proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log)
        wait_http(f"http://{self.host}/v2/", 30, self.proc, "docker-registry")


@pytest.fixture(scope="module")
def refusing_lane(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArtifactLane, str]]:
    if REGISTRY_BINARY is None:
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")
    reg = ReadOnlyRegistry(tmp_path_factory.mktemp("readonly"))
    reg.start()
    try:
        yield from _lane(platform, tmp_path_factory.mktemp("readonly-lane"), {"FORGE_OCI_REGISTRY": reg.host})
    finally:
        reg.stop()


async def test_a_registry_that_refuses_the_push_fails_the_run(refusing_lane: tuple[ArtifactLane, str]) -> None:
    lane, gateway = refusing_lane
    declaration = 'build = "mkdir -p dist && echo x > dist/x"\npath = "dist/x"'
    await _expect_failure_all(lane, gateway, f"acme{lane.tag}/refused", declaration)


async def _expect_failure_all(lane: ArtifactLane, gateway: str, repository: str, declaration: str) -> None:
    artifacts = f'[[artifacts]]\nname = "broken"\ntype = "binary"\n{declaration}\n'
    _, run = await _run(lane, gateway, repository, _files(_project(artifacts)))
    assert run["status"] == "failed", f"{run}\n{lane.log_tails()}"
    assert run["failed_phase"] == "artifacts"
    for part in ("artifact broken", "the platform registry refused the push"):
        assert part in run["error"], run["error"]


# --- github-release: tag runs ---------------------------------------------------------------

GITHUB_ARTIFACT = """
[[artifacts]]
name = "cli"
type = "binary"
build = "mkdir -p dist && printf 'cli built at %s\\n' $FORGE_COMMIT_SHA > dist/cli"
path = "dist/cli"
publish = ["github-release"]
[release]
on = [{ tag = "v*" }]
"""


async def _tag_run(lane: ArtifactLane, gateway: str, repository: str) -> tuple[str, dict[str, Any]]:
    """The commit pushed, then its tag: GitHub's signed push of ``refs/tags/{TAG}`` starts the run."""
    sha = _push(lane.repos, repository, _files(_project(GITHUB_ARTIFACT, release=False)))
    viewer = lane.platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        resp = await _deliver_push(client, repository, sha, ref=f"refs/tags/{TAG}", base_ref="refs/heads/main")
        assert resp.status_code == 201, resp.text
        assert (resp.json()["status"], resp.json()["tag"]) == ("created", TAG)
        run = await _poll(
            client,
            f"/v1/runs/{resp.json()['run_id']}",
            viewer,
            lambda r: r["status"] in ("success", "failed", "cancelled"),
            240,
        )
    return sha, run


def _release_calls(github: FakeGitHub, repository: str) -> list[tuple[str, str, int]]:
    kinds = ("release_lookup", "release_create", "asset_upload")
    return [
        (c["kind"], c["tag"], c["status"]) for c in github.calls if c["kind"] in kinds and c["repository"] == repository
    ]


async def test_a_tag_run_attaches_its_artifact_to_the_github_release(
    platform: Platform, embedded: tuple[ArtifactLane, str], github: FakeGitHub
) -> None:
    lane, gateway = embedded
    repository = f"acme{lane.tag}/cli-tool"
    github.fail_uploads = 1  # GitHub's uploads host answers the first upload 502

    sha, run = await _tag_run(lane, gateway, repository)

    assert run["status"] == "success", f"{run}\n{lane.log_tails()}"
    assert [(p["name"], p["status"]) for p in run["phases"]] == [("test", "success"), ("artifacts", "success")]
    # the tag's release looked up (none), created, the upload refused with 502 and retried
    assert _release_calls(github, repository) == [
        ("release_lookup", TAG, 404),
        ("release_create", TAG, 201),
        ("asset_upload", TAG, 502),
        ("release_lookup", TAG, 200),
        ("asset_upload", TAG, 201),
    ]
    # the asset is exactly what the build wrote
    uploaded = {(tag, name): data for (repo, tag, name), data in github.assets.items() if repo == repository}
    assert uploaded == {(TAG, "api-cli"): f"cli built at {sha}\n".encode()}
    [artifact] = run["artifacts"]
    download = f"{github.url}/{repository}/releases/download/{TAG}/api-cli"
    assert (artifact["name"], artifact["status"]) == ("cli", "success")
    assert artifact["primary_published_uri"] == download
    assert artifact["published_uris"] == [download]

    # Forge's own release of the tag lists the artifact, with where it was published
    created = await wait_for_event(
        platform, "release.created", lambda e: e["data"]["repository"] == repository, timeout=120
    )
    assert created["data"]["trigger_type"] == "tag"
    viewer = platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        release = (await client.get(f"/v1/releases/{repository}/api/{TAG}", headers=viewer)).json()
    assert release["id"] == created["data"]["release_id"]
    [listed] = release["artifacts"]
    assert (listed["name"], listed["digest"], listed["primary_published_uri"]) == ("cli", artifact["digest"], download)


async def test_github_refusing_the_release_fails_the_run_without_a_release(
    embedded: tuple[ArtifactLane, str], github: FakeGitHub
) -> None:
    lane, gateway = embedded
    repository = f"acme{lane.tag}/no-permission"
    github.refuse_releases.add(repository)  # 403, as for a token without contents: write

    _, run = await _tag_run(lane, gateway, repository)

    assert run["status"] == "failed", f"{run}\n{lane.log_tails()}"
    assert run["failed_phase"] == "artifacts"
    for part in (
        "task api of phase artifacts failed",
        "artifact cli of project api",
        "github-release: GitHub refused to create the release: HTTP 403",
        "Resource not accessible by integration",
    ):
        assert part in run["error"], run["error"]
    assert [(a["name"], a["status"]) for a in run["artifacts"]] == [("cli", "failed")]
    # a refusal is not retried, and nothing was released, on GitHub or in Forge
    assert _release_calls(github, repository) == [("release_lookup", TAG, 404), ("release_create", TAG, 403)]
    assert not [key for key in github.releases if key[0] == repository]
    viewer = lane.platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=30.0) as client:
        listing = await client.get(f"/v1/releases/{repository}/api", headers=viewer)
    assert listing.status_code == 404 or listing.json()["total"] == 0, listing.text
