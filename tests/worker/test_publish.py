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


# --- publishing again: a redelivered job, a tag pushed after the build ---------------------


async def test_an_asset_already_attached_with_the_same_size_is_not_uploaded_again(
    github: FakeGitHub, tmp_path: Path
) -> None:
    github.fail_uploads = 0
    binary = tmp_path / "cli"
    binary.write_bytes(b"same bytes")
    destinations = Destinations(s3=None, github_api_url=github.url, github_token="ghs_test", backoff=0.01)

    first = await destinations.github_release("acme/shop", "v2", "api-cli", binary)
    again = await destinations.github_release("acme/shop", "v2", "api-cli", binary)

    assert first == again == f"{github.url}/acme/shop/releases/download/v2/api-cli"
    assert [c["kind"] for c in github.calls].count("asset_upload") == 1
    assert github.assets == {("acme/shop", "v2", "api-cli"): b"same bytes"}


async def test_an_upload_answered_already_exists_counts_as_done_when_the_size_matches(
    github: FakeGitHub, tmp_path: Path
) -> None:
    """Two publishers racing: the release listed no asset, the upload finds the name taken (422
    already_exists); the asset there has our size, so it is ours."""
    github.fail_uploads = 0
    binary = tmp_path / "cli"
    binary.write_bytes(b"raced")
    destinations = Destinations(s3=None, github_api_url=github.url, github_token="ghs_test", backoff=0.01)
    await destinations.github_release("acme/shop", "v3", "api-cli", binary)
    github.assets_hidden = 1  # the next lookup lists no asset, as a lagging replica would

    uri = await destinations.github_release("acme/shop", "v3", "api-cli", binary)

    assert uri == f"{github.url}/acme/shop/releases/download/v3/api-cli"
    assert [(c["kind"], c["status"]) for c in github.calls][-3:] == [
        ("release_lookup", 200),
        ("asset_upload", 422),
        ("release_lookup", 200),
    ]


async def test_an_asset_of_another_size_under_the_name_is_a_refusal(github: FakeGitHub, tmp_path: Path) -> None:
    github.fail_uploads = 0
    destinations = Destinations(s3=None, github_api_url=github.url, github_token="ghs_test", backoff=0.01)
    theirs = tmp_path / "theirs"
    theirs.write_bytes(b"someone else's file")
    await destinations.github_release("acme/shop", "v4", "api-cli", theirs)
    ours = tmp_path / "ours"
    ours.write_bytes(b"ours")

    with pytest.raises(PublishError, match="already has an asset named api-cli of 19 bytes, not 4"):
        await destinations.github_release("acme/shop", "v4", "api-cli", ours)
    assert github.assets[("acme/shop", "v4", "api-cli")] == b"someone else's file"
