"""``github-release`` publishing against a local server speaking GitHub's releases API
(:class:`tests.integrations.github_api.FakeGitHub`, the one the gateway-level tests use too).
Its first upload answers 502, as GitHub sometimes does: the publisher retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forge_common.jobs import ArtifactJob
from forge_worker.packaging import package
from forge_worker.publish import Destinations, PublishError
from tests.integrations.github_api import FakeGitHub


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = await FakeGitHub(token="ghs_test", fail_uploads=1).start()
    try:
        yield fake
    finally:
        await fake.stop()


def _job(tag: str | None) -> ArtifactJob:
    return ArtifactJob(
        job_id="a",
        run_id="r",
        task_id="t",
        repository="acme/shop",
        commit_sha="c" * 40,
        tag=tag,
        project="api",
        name="cli",
        type="binary",
        build="true",
        path="dist/cli",
        publish=["github-release"],
    )


async def test_a_tag_run_attaches_the_artifact_to_the_tags_release(github: FakeGitHub, tmp_path: Path) -> None:
    binary = tmp_path / "cli"
    binary.write_bytes(b"\x7fELF pretend binary")
    packaged = package("binary", "cli", binary, tmp_path)
    destinations = Destinations(s3=None, github_api_url=github.url, github_token="ghs_test", backoff=0.01)

    uris = await destinations.publish(_job("v1.2.0"), packaged, "sha256:" + "0" * 64)

    assert uris == [f"{github.url}/acme/shop/releases/download/v1.2.0/api-cli"]
    assert github.assets == {("acme/shop", "v1.2.0", "api-cli"): b"\x7fELF pretend binary"}
    assert set(github.releases) == {("acme/shop", "v1.2.0")}
    # the retry looked the release up again (found this time) and uploaded again
    assert [(c["kind"], c["status"]) for c in github.calls] == [
        ("release_lookup", 404),
        ("release_create", 201),
        ("asset_upload", 502),
        ("release_lookup", 200),
        ("asset_upload", 201),
    ]


async def test_a_branch_run_has_no_github_release_to_attach_to(github: FakeGitHub, tmp_path: Path) -> None:
    binary = tmp_path / "cli"
    binary.write_bytes(b"x")
    destinations = Destinations(s3=None, github_api_url=github.url, github_token="ghs_test", backoff=0.01)

    uris = await destinations.publish(_job(None), package("binary", "cli", binary, tmp_path), "sha256:" + "0" * 64)

    assert uris == []
    assert github.releases == {}


async def test_without_a_token_github_release_fails_clearly(github: FakeGitHub, tmp_path: Path) -> None:
    binary = tmp_path / "cli"
    binary.write_bytes(b"x")
    destinations = Destinations(s3=None, github_api_url=github.url, github_token="")

    with pytest.raises(PublishError, match="no FORGE_GITHUB_TOKEN"):
        await destinations.publish(_job("v1"), package("binary", "cli", binary, tmp_path), "sha256:" + "0" * 64)
