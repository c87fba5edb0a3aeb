"""A local HTTP server speaking the parts of the GitHub REST API Forge calls.

It records, in arrival order, commit statuses (``POST /repos/{owner}/{repo}/statuses/{sha}``),
deployments (``POST /repos/{owner}/{repo}/deployments``, answered with a new numeric ``id`` as
GitHub does) and deployment statuses (``POST /repos/{owner}/{repo}/deployments/{id}/statuses``,
404 for a deployment it never created). ``fail_next`` makes the next calls answer 502.

It also keeps Releases, as api.github.com and uploads.github.com do for ``github-release``
artifacts: ``GET /repos/{owner}/{repo}/releases/tags/{tag}`` (404 when there is none), ``POST
/repos/{owner}/{repo}/releases`` (201 with an ``upload_url`` template; 422 ``already_exists`` for a
tag that has one) and ``POST {upload_url}?name=...`` with the asset's raw bytes (201 with its
``browser_download_url``; 422 ``already_exists`` for a name the release already has). A release
lists its ``assets`` (``name``, ``size``, ``browser_download_url``), as GitHub's does. ``fail_uploads`` makes the
next uploads answer 502; a repository in ``refuse_releases`` gets 403 when creating a release,
as for a token without ``contents: write``. Every release call is recorded, refused ones too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from forge_dev.stack import free_port

Call = dict[str, Any]


@dataclass
class FakeGitHub:
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    deployments: dict[int, Call] = field(default_factory=dict)
    fail_next: int = 0
    failures_served: int = 0
    token: str = "ghp_integration_token"
    # Releases by (repository, tag); asset bytes by (repository, tag, name).
    releases: dict[tuple[str, str], Call] = field(default_factory=dict)
    assets: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    fail_uploads: int = 0
    refuse_releases: set[str] = field(default_factory=set)
    # The next lookups list no assets (a replica lagging behind an upload).
    assets_hidden: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeGitHub:
        app = web.Application()
        app.router.add_post("/repos/{owner}/{repo}/statuses/{sha}", self._commit_status)
        app.router.add_post("/repos/{owner}/{repo}/deployments", self._deployment)
        app.router.add_post("/repos/{owner}/{repo}/deployments/{id}/statuses", self._deployment_status)
        app.router.add_get("/repos/{owner}/{repo}/releases/tags/{tag}", self._release_by_tag)
        app.router.add_post("/repos/{owner}/{repo}/releases", self._create_release)
        app.router.add_post("/uploads/repos/{owner}/{repo}/releases/{id}/assets", self._upload_asset)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _accept(self, request: web.Request, kind: str) -> tuple[Call, web.Response | None]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return {}, web.json_response({"message": "Bad credentials"}, status=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures_served += 1
            return {}, web.json_response({"message": "Server Error"}, status=502)
        body = await request.json()
        call = {"kind": kind, "repository": f"{request.match_info['owner']}/{request.match_info['repo']}", **body}
        return call, None

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self.changed.set()

    async def _commit_status(self, request: web.Request) -> web.Response:
        call, refused = await self._accept(request, "commit_status")
        if refused is not None:
            return refused
        call["sha"] = request.match_info["sha"]
        self._record(call)
        return web.json_response({"id": len(self.calls), **call}, status=201)

    async def _deployment(self, request: web.Request) -> web.Response:
        call, refused = await self._accept(request, "deployment")
        if refused is not None:
            return refused
        github_id = 1000 + len(self.deployments)
        call["github_id"] = github_id
        self.deployments[github_id] = call
        self._record(call)
        return web.json_response({"id": github_id, "sha": call["ref"], **call}, status=201)

    async def _deployment_status(self, request: web.Request) -> web.Response:
        deployment = self.deployments.get(int(request.match_info["id"]))
        if deployment is None:
            return web.json_response({"message": "Not Found"}, status=404)
        call, refused = await self._accept(request, "deployment_status")
        if refused is not None:
            return refused
        call["github_id"] = deployment["github_id"]
        call["forge_deployment_id"] = deployment["payload"]["forge_deployment_id"]
        self._record(call)
        return web.json_response({"id": len(self.calls), **call}, status=201)

    # --- releases ---------------------------------------------------------------------------

    def _release_call(self, request: web.Request, kind: str, status: int, **fields: Any) -> None:
        repository = f"{request.match_info['owner']}/{request.match_info['repo']}"
        self._record({"kind": kind, "repository": repository, "status": status, **fields})

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _release_by_tag(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Bad credentials"}, status=401)
        repository = f"{request.match_info['owner']}/{request.match_info['repo']}"
        tag = request.match_info["tag"]
        release = self.releases.get((repository, tag))
        status = 404 if release is None else 200
        self._release_call(request, "release_lookup", status, tag=tag)
        if release is None:
            return web.json_response({"message": "Not Found"}, status=404)
        return web.json_response({**release, "assets": self._assets_of(repository, tag)}, status=200)

    def _assets_of(self, repository: str, tag: str) -> list[Call]:
        if self.assets_hidden > 0:
            self.assets_hidden -= 1
            return []
        return [
            {"name": name, "size": len(data), "browser_download_url": self._download_url(repository, tag, name)}
            for (repo, t, name), data in self.assets.items()
            if (repo, t) == (repository, tag)
        ]

    def _download_url(self, repository: str, tag: str, name: str) -> str:
        return f"{self.url}/{repository}/releases/download/{tag}/{name}"

    async def _create_release(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Bad credentials"}, status=401)
        repository = f"{request.match_info['owner']}/{request.match_info['repo']}"
        body = await request.json()
        tag = body.get("tag_name", "")
        if repository in self.refuse_releases:
            self._release_call(request, "release_create", 403, tag=tag)
            return web.json_response({"message": "Resource not accessible by integration"}, status=403)
        if (repository, tag) in self.releases:
            self._release_call(request, "release_create", 422, tag=tag)
            error = {"resource": "Release", "code": "already_exists", "field": "tag_name"}
            return web.json_response({"message": "Validation Failed", "errors": [error]}, status=422)
        number = len(self.releases) + 1
        release = {
            "id": number,
            "tag_name": tag,
            "name": body.get("name", tag),
            "upload_url": f"{self.url}/uploads/repos/{repository}/releases/{number}/assets{{?name,label}}",
            "html_url": f"{self.url}/{repository}/releases/tag/{tag}",
        }
        self.releases[(repository, tag)] = release
        self._release_call(request, "release_create", 201, tag=tag)
        return web.json_response({**release, "assets": []}, status=201)

    async def _upload_asset(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Bad credentials"}, status=401)
        repository = f"{request.match_info['owner']}/{request.match_info['repo']}"
        name = request.query.get("name", "")
        data = await request.read()
        tags = [
            tag
            for (repo, tag), r in self.releases.items()
            if repo == repository and r["id"] == int(request.match_info["id"])
        ]
        if not tags:
            self._release_call(request, "asset_upload", 404, name=name, size=len(data))
            return web.json_response({"message": "Not Found"}, status=404)
        if self.fail_uploads > 0:
            self.fail_uploads -= 1
            self.failures_served += 1
            self._release_call(request, "asset_upload", 502, tag=tags[0], name=name, size=len(data))
            return web.json_response({"message": "Server Error"}, status=502)
        if (repository, tags[0], name) in self.assets:
            self._release_call(request, "asset_upload", 422, tag=tags[0], name=name, size=len(data))
            error = {"resource": "ReleaseAsset", "code": "already_exists", "field": "name"}
            return web.json_response({"message": "Validation Failed", "errors": [error]}, status=422)
        self.assets[(repository, tags[0], name)] = data
        self._release_call(request, "asset_upload", 201, tag=tags[0], name=name, size=len(data))
        url = self._download_url(repository, tags[0], name)
        return web.json_response({"id": len(self.assets), "name": name, "browser_download_url": url}, status=201)

    async def wait_for(self, select: Callable[[Call], bool], count: int, timeout: float = 30.0) -> list[Call]:
        """The calls ``select`` picks, once there are ``count`` of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(picked := [c for c in self.calls if select(c)]) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"expected {count} GitHub calls, got {picked}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=left)
        return picked
