"""``github-release`` publishing against a local server speaking GitHub's releases API.

The fake answers like api.github.com and uploads.github.com do: ``GET
/repos/{owner}/{repo}/releases/tags/{tag}`` (404 when there is none), ``POST
/repos/{owner}/{repo}/releases`` (201 with an ``upload_url`` template), and ``POST
{upload_url}?name=...`` with the raw bytes (201 with ``browser_download_url``). Its first
upload answers 502, as GitHub sometimes does: the publisher retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from forge_common.jobs import ArtifactJob
from forge_worker.packaging import package
from forge_worker.publish import Destinations, PublishError


class FakeGitHub:
    def __init__(self) -> None:
        self.releases: dict[str, dict[str, Any]] = {}
        self.assets: dict[str, bytes] = {}
        self.auth: list[str] = []
        self.upload_failures = 1
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/repos/{owner}/{repo}/releases/tags/{tag}", self.by_tag)
        app.router.add_post("/repos/{owner}/{repo}/releases", self.create)
        app.router.add_post("/uploads/repos/{owner}/{repo}/releases/{id}/assets", self.upload)
        return app

    async def by_tag(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        release = self.releases.get(request.match_info["tag"])
        if release is None:
            return web.json_response({"message": "Not Found"}, status=404)
        return web.json_response(release)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        number = len(self.releases) + 1
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        release = {
            "id": number,
            "tag_name": body["tag_name"],
            "upload_url": f"{self.base}/uploads/repos/{owner}/{repo}/releases/{number}/assets{{?name,label}}",
        }
        self.releases[body["tag_name"]] = release
        return web.json_response(release, status=201)

    async def upload(self, request: web.Request) -> web.Response:
        if self.upload_failures > 0:
            self.upload_failures -= 1
            return web.json_response({"message": "Server Error"}, status=502)
        name = request.query["name"]
        self.assets[name] = await request.read()
        url = f"{self.base}/download/{request.match_info['id']}/{name}"
        return web.json_response({"id": 1, "name": name, "browser_download_url": url}, status=201)


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


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
    destinations = Destinations(s3=None, github_api_url=github.base, github_token="ghs_test", backoff=0.01)

    uris = await destinations.publish(_job("v1.2.0"), packaged, "sha256:" + "0" * 64)

    assert uris == [f"{github.base}/download/1/api-cli"]
    assert github.assets == {"api-cli": b"\x7fELF pretend binary"}
    assert set(github.releases) == {"v1.2.0"}
    assert set(github.auth) == {"Bearer ghs_test"}  # the retry looked the release up again


async def test_a_branch_run_has_no_github_release_to_attach_to(github: FakeGitHub, tmp_path: Path) -> None:
    binary = tmp_path / "cli"
    binary.write_bytes(b"x")
    destinations = Destinations(s3=None, github_api_url=github.base, github_token="ghs_test", backoff=0.01)

    uris = await destinations.publish(_job(None), package("binary", "cli", binary, tmp_path), "sha256:" + "0" * 64)

    assert uris == []
    assert github.releases == {}


async def test_without_a_token_github_release_fails_clearly(github: FakeGitHub, tmp_path: Path) -> None:
    binary = tmp_path / "cli"
    binary.write_bytes(b"x")
    destinations = Destinations(s3=None, github_api_url=github.base, github_token="")

    with pytest.raises(PublishError, match="no FORGE_GITHUB_TOKEN"):
        await destinations.publish(_job("v1"), package("binary", "cli", binary, tmp_path), "sha256:" + "0" * 64)
