"""Real HTTP servers the gateway is pointed at: an echo service and a JWKS endpoint.

They run in the test session's event loop (aiohttp's server, no threads), on free ports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from aiohttp import web

from forge_dev.stack import free_port


class Server:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> Server:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


def echo_app(name: str) -> web.Application:
    """Answers every path with what it received; a few paths misbehave on purpose."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.json_response({"late": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        chunks = int(request.query.get("chunks", "5"))
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(chunks):
            await resp.write(f"chunk {i}\n".encode())
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def big(request: web.Request) -> web.Response:
        size = int(request.query.get("bytes", str(2 * 1024 * 1024)))
        return web.Response(body=b"x" * size, content_type="application/octet-stream")

    async def cookie(_: web.Request) -> web.Response:
        resp = web.json_response({"cookie": "set"}, status=201)
        resp.set_cookie("session", "secret-of-someone")
        resp.headers["Keep-Alive"] = "timeout=5"
        return resp

    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Length": request.query.get("length", "100000")})
        await resp.prepare(request)
        await resp.write(b"only the start")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # dies in the middle of its body
        return resp

    async def echo(request: web.Request) -> web.Response:
        hasher = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            hasher.update(chunk)
            size += len(chunk)
        body: dict[str, Any] = {
            "upstream": name,
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "query": request.raw_path.partition("?")[2],
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_names": [k.lower() for k in request.headers],
            "body_size": size,
            "body_sha256": hasher.hexdigest(),
            "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
        }
        status = int(request.headers.get("X-Echo-Status", "200"))
        return web.Response(body=json.dumps(body), status=status, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/{seg}/slow", slow)
    app.router.add_get("/v1/{seg}/stream", stream)
    app.router.add_get("/v1/{seg}/big", big)
    app.router.add_get("/v1/{seg}/cookie", cookie)
    app.router.add_get("/v1/{seg}/truncated", truncated)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def garbage_server() -> tuple[asyncio.Server, str]:
    """Answers every connection with bytes that are not HTTP."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"SSH-2.0-OpenSSH_9.0 not http at all\r\n\r\n")
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}"


async def close_delimited_server() -> tuple[asyncio.Server, str]:
    """HTTP/1.0 style: no Content-Length, no chunking; the body ends when the connection does."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        for part in (b"hello ", b"until ", b"close"):
            writer.write(part)
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}"


class JwksServer:
    """A JWKS endpoint whose key set the test replaces (key rotation at the identity provider)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        app = web.Application()
        app.router.add_get("/realms/rotating/protocol/openid-connect/certs", self._certs)
        self.server = Server(app)

    @property
    def issuer(self) -> str:
        return f"{self.server.url}/realms/rotating"

    async def _certs(self, _: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys})
