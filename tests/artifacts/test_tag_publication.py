"""A tag pushed onto a commit whose run already built its artifacts, through the gateway as GitHub
drives it (signed push webhooks), against a local server speaking GitHub's releases API.

The usual flow: ``main`` is pushed, its run succeeds with a ``github-release`` artifact (nothing
attached: a branch has no GitHub Release); then the tag is pushed onto that same commit. No run
starts and nothing is rebuilt: the artifact the run pushed to the tracking registry is attached to
the tag's GitHub Release (looked up, created, the exact bytes uploaded), the run's artifact lists
the asset's URL, and Forge's release of the tag names it as the primary published URI. GitHub
redelivering the tag webhook, or a second delivery of the same tag push, uploads nothing again.

A tag that arrives while the artifact is still being built is attached once the build is done,
exactly once. GitHub refusing the tag's release (403) shows on the artifact as its error, counts
in ``forge_pipeline_tag_publication_failures_total``, and leaves the run (and the artifact) a
success: what was built did not change; pushing the tag again tries it again.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge_dev.testing import Platform
from tests.artifacts.test_artifacts import (
    GITHUB_ARTIFACT,
    VIEWER,
    ArtifactLane,
    _files,
    _lane,
    _project,
    _release_calls,
)
from tests.e2e.test_lifecycle import _deliver_push, _poll, _push
from tests.integrations.github_api import FakeGitHub

pytestmark = pytest.mark.slow

GITHUB_TOKEN = "ghs_tag_publication_test"
TAG = "v2.0.0"


@pytest.fixture(scope="module")
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token=GITHUB_TOKEN).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory both the test and the sandboxed builds write to (FORGE_STEP_WRITABLE_PATHS)."""
    with tempfile.TemporaryDirectory(prefix="forge-tagpub-") as path:
        os.chmod(path, 0o777)  # noqa: S103 - the step user (nobody) writes here
        yield Path(path)


@pytest.fixture(scope="module")
def lane(
    platform: Platform, github: FakeGitHub, shared: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ArtifactLane, str]]:
    extra = {
        "FORGE_GITHUB_API_URL": github.url,
        "FORGE_GITHUB_TOKEN": GITHUB_TOKEN,
        "FORGE_STEP_WRITABLE_PATHS": str(shared),
    }
    yield from _lane(platform, tmp_path_factory.mktemp("tagpub"), extra)


def _uploads(github: FakeGitHub, repository: str) -> list[tuple[str, str, int]]:
    return [(tag, kind, status) for kind, tag, status in _release_calls(github, repository) if kind == "asset_upload"]


async def _uploaded(github: FakeGitHub, app: ArtifactLane, repository: str, tag: str) -> None:
    """Until GitHub received the upload of the tag's asset (the logs say why not, if never)."""
    try:
        await github.wait_for(
            lambda c: c.get("repository") == repository and c["kind"] == "asset_upload" and c["tag"] == tag, 1, 120
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{app.log_tails(20000)}") from None


async def _main_run(client: httpx.AsyncClient, lane: ArtifactLane, repository: str, project: str) -> tuple[str, str]:
    """GitHub's push of main: the commit's run (not waited for); its sha and id."""
    sha = _push(lane.repos, repository, _files(project))
    resp = await _deliver_push(client, repository, sha)
    assert resp.status_code == 201, resp.text
    return sha, str(resp.json()["run_id"])


async def _finished(client: httpx.AsyncClient, run_id: str, viewer: dict[str, str]) -> dict[str, Any]:
    done = ("success", "failed", "cancelled")
    run: dict[str, Any] = await _poll(client, f"/v1/runs/{run_id}", viewer, lambda r: r["status"] in done, 240)
    return run


async def _tag(client: httpx.AsyncClient, repository: str, sha: str, tag: str, delivery: str | None = None) -> Any:
    resp = await _deliver_push(
        client, repository, sha, ref=f"refs/tags/{tag}", base_ref="refs/heads/main", delivery_id=delivery
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_a_tag_pushed_after_the_build_attaches_the_built_artifact_once(
    lane: tuple[ArtifactLane, str], github: FakeGitHub
) -> None:
    app, gateway = lane
    repository = f"acme{app.tag}/cli-after"
    viewer = app.platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        sha, run_id = await _main_run(client, app, repository, _project(GITHUB_ARTIFACT, release=False))
        run = await _finished(client, run_id, viewer)
        assert run["status"] == "success", f"{run}\n{app.log_tails()}"
        [built] = run["artifacts"]
        # a branch has no GitHub Release: nothing attached yet
        assert (built["name"], built["status"], built["published_uris"]) == ("cli", "success", [])
        assert _release_calls(github, repository) == []

        delivery = str(uuid.uuid4())
        answer = await _tag(client, repository, sha, TAG, delivery)
        assert (answer["status"], answer["run_id"], answer["tag"]) == ("tag_recorded", run_id, TAG)

        await _uploaded(github, app, repository, TAG)
        download = f"{github.url}/{repository}/releases/download/{TAG}/api-cli"
        run = await _poll(
            client, f"/v1/runs/{run_id}", viewer, lambda r: r["artifacts"][0]["published_uris"] == [download], 60
        )
        # the same run, not rebuilt: same digest, still a success
        [artifact] = run["artifacts"]
        assert (run["status"], artifact["digest"], artifact["error"]) == ("success", built["digest"], None)
        assert artifact["primary_published_uri"] == download
        assert [p["name"] for p in run["phases"]] == ["test", "artifacts"]
        # the tag's release looked up, created, the exact bytes the main run built uploaded
        assert _release_calls(github, repository) == [
            ("release_lookup", TAG, 404),
            ("release_create", TAG, 201),
            ("asset_upload", TAG, 201),
        ]
        uploaded = {(tag, name): data for (repo, tag, name), data in github.assets.items() if repo == repository}
        assert uploaded == {(TAG, "api-cli"): f"cli built at {sha}\n".encode()}

        # Forge's release of the tag (rule { tag = "v*" }) names the GitHub asset
        release = await _poll(
            client, f"/v1/releases/{repository}/api/{TAG}", viewer, lambda r: bool(r.get("artifacts")), 120
        )
        [listed] = release["artifacts"]
        assert (listed["name"], listed["digest"], listed["primary_published_uri"]) == (
            "cli",
            built["digest"],
            download,
        )

        # GitHub redelivers the webhook, then delivers the same tag push again under a new id
        assert (await _tag(client, repository, sha, TAG, delivery))["status"] == "duplicate"
        assert (await _tag(client, repository, sha, TAG))["status"] == "tag_recorded"
        # a second tag is attached as well; by then a duplicate of the first would have been sent
        await _tag(client, repository, sha, "v2.0.1")
        await _uploaded(github, app, repository, "v2.0.1")
        run = await _poll(
            client, f"/v1/runs/{run_id}", viewer, lambda r: len(r["artifacts"][0]["published_uris"]) == 2, 60
        )
    assert _uploads(github, repository) == [(TAG, "asset_upload", 201), ("v2.0.1", "asset_upload", 201)]
    assert run["artifacts"][0]["published_uris"] == [
        download,
        f"{github.url}/{repository}/releases/download/v2.0.1/api-cli",
    ]


def _gated_artifact(shared: Path, key: str) -> str:
    """The github-release artifact whose build says it started, then waits for the test's gate."""
    started, gate = shared / f"started-{key}", shared / f"gate-{key}"
    return f"""
[[artifacts]]
name = "cli"
type = "binary"
build = "touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done; mkdir -p dist && printf 'cli built at %s\\\\n' $FORGE_COMMIT_SHA > dist/cli"
path = "dist/cli"
publish = ["github-release"]
"""


async def _appears(path: Path, timeout: float = 120.0) -> None:
    """Wait for a file only a sandboxed build creates (no event to subscribe to)."""
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.05)


async def test_a_tag_pushed_during_the_build_is_attached_once_the_artifact_exists(
    lane: tuple[ArtifactLane, str], github: FakeGitHub, shared: Path
) -> None:
    app, gateway = lane
    repository = f"acme{app.tag}/cli-during"
    key = uuid.uuid4().hex[:8]
    viewer = app.platform.headers(VIEWER, "viewer")
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        sha, run_id = await _main_run(client, app, repository, _project(_gated_artifact(shared, key), release=False))
        await _appears(shared / f"started-{key}")  # the artifact job is building, without a tag

        answer = await _tag(client, repository, sha, TAG)
        assert (answer["status"], answer["run_id"]) == ("tag_recorded", run_id)
        assert _release_calls(github, repository) == []  # no artifact to attach yet
        (shared / f"gate-{key}").touch()

        run = await _finished(client, run_id, viewer)
        assert run["status"] == "success", f"{run}\n{app.log_tails()}"
        await _uploaded(github, app, repository, TAG)
        download = f"{github.url}/{repository}/releases/download/{TAG}/api-cli"
        run = await _poll(
            client, f"/v1/runs/{run_id}", viewer, lambda r: r["artifacts"][0]["published_uris"] == [download], 60
        )
    assert _release_calls(github, repository) == [
        ("release_lookup", TAG, 404),
        ("release_create", TAG, 201),
        ("asset_upload", TAG, 201),
    ]
    uploaded = {(tag, name): data for (repo, tag, name), data in github.assets.items() if repo == repository}
    assert uploaded == {(TAG, "api-cli"): f"cli built at {sha}\n".encode()}


async def test_github_refusing_a_later_tag_shows_on_the_artifact_and_leaves_the_run_a_success(
    lane: tuple[ArtifactLane, str], github: FakeGitHub
) -> None:
    app, gateway = lane
    repository = f"acme{app.tag}/cli-refused"
    github.refuse_releases.add(repository)  # 403, as for a token without contents: write
    viewer = app.platform.headers(VIEWER, "viewer")
    pipeline = app.processes[0]
    async with httpx.AsyncClient(base_url=gateway, timeout=60.0) as client:
        before = _failures(await client.get(f"{pipeline.url}/metrics"))
        sha, run_id = await _main_run(client, app, repository, _project(GITHUB_ARTIFACT, release=False))
        run = await _finished(client, run_id, viewer)
        assert run["status"] == "success", f"{run}\n{app.log_tails()}"

        await _tag(client, repository, sha, TAG)

        run = await _poll(client, f"/v1/runs/{run_id}", viewer, lambda r: r["artifacts"][0]["error"] is not None, 120)
        [artifact] = run["artifacts"]
        # built and still a success, like its run; the error says which tag and why not
        assert (run["status"], artifact["status"], artifact["published_uris"]) == ("success", "success", [])
        for part in (
            f"github-release of tag {TAG}",
            "artifact cli of project api",
            "GitHub refused to create the release: HTTP 403",
            "Resource not accessible by integration",
        ):
            assert part in artifact["error"], artifact["error"]
        # a refusal is not retried
        assert _release_calls(github, repository) == [("release_lookup", TAG, 404), ("release_create", TAG, 403)]
        after = _failures(await client.get(f"{pipeline.url}/metrics"))
        assert after == before + 1

        # the token fixed, the tag pushed again: the failed publication is tried again, and made
        github.refuse_releases.discard(repository)
        assert (await _tag(client, repository, sha, TAG))["status"] == "tag_recorded"
        await _uploaded(github, app, repository, TAG)
        download = f"{github.url}/{repository}/releases/download/{TAG}/api-cli"
        run = await _poll(
            client, f"/v1/runs/{run_id}", viewer, lambda r: r["artifacts"][0]["published_uris"] == [download], 60
        )
    assert (run["status"], run["artifacts"][0]["error"]) == ("success", None)
    assert github.assets[(repository, TAG, "api-cli")] == f"cli built at {sha}\n".encode()


def _failures(metrics: httpx.Response) -> float:
    for line in metrics.text.splitlines():
        if line.startswith('forge_pipeline_tag_publication_failures_total{reason="failed"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("forge_pipeline_tag_publication_failures_total is not exported")
