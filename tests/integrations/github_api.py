"""A local HTTP server speaking the parts of the GitHub REST API Forge calls.

It records, in arrival order, commit statuses (``POST /repos/{owner}/{repo}/statuses/{sha}``),
deployments (``POST /repos/{owner}/{repo}/deployments``, answered with a new numeric ``id`` as
GitHub does) and deployment statuses (``POST /repos/{owner}/{repo}/deployments/{id}/statuses``,
404 for a deployment it never created). ``fail_next`` makes the next calls answer 502.
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
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeGitHub:
        app = web.Application()
        app.router.add_post("/repos/{owner}/{repo}/statuses/{sha}", self._commit_status)
        app.router.add_post("/repos/{owner}/{repo}/deployments", self._deployment)
        app.router.add_post("/repos/{owner}/{repo}/deployments/{id}/statuses", self._deployment_status)
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
        if request.headers.get("Authorization") != "Bearer ghp_integration_token":
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
