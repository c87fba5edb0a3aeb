"""A Forge app built with ``forge_common.http.build_app``, served by a real uvicorn in a thread.

The app's routes raise each error class of the platform on purpose, so the error envelope can be
checked for every one of them, as a client of any service sees it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import msgspec
import uvicorn
from litestar import Request, get, post, put
from litestar.params import FromPath, JSONBody

from forge_common.auth import Permission
from forge_common.errors import Conflict, LimitExceeded, NotFound
from forge_common.http import AppSpec, build_app, principal_of
from forge_common.settings import CommonSettings, load
from forge_dev.stack import free_port


class Widget(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    size: int


@get("/v1/widgets", opt={"permission": Permission.READ}, sync_to_thread=False)
def list_widgets(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"widgets": [], "caller": principal_of(request).identity}


@post("/v1/widgets", opt={"permission": Permission.RUNS_WRITE}, sync_to_thread=False)
def create_widget(data: JSONBody[Widget]) -> dict[str, Any]:
    if data.name == "taken":
        raise Conflict("a widget with this name exists", {"existing_id": "w-1"})
    return {"name": data.name, "size": data.size}


@get("/v1/widgets/{widget_id:str}", opt={"permission": Permission.READ}, sync_to_thread=False)
def get_widget(widget_id: FromPath[str]) -> dict[str, Any]:
    raise NotFound(f"widget {widget_id} not found", {"widget_id": widget_id})


@put("/v1/widgets/{widget_id:str}/status", opt={"permission": Permission.INTERNAL_STATUS}, sync_to_thread=False)
def widget_status(widget_id: FromPath[str]) -> dict[str, Any]:
    return {"id": widget_id, "status": "ok"}


@post("/v1/quota", opt={"permission": Permission.RUNS_WRITE}, sync_to_thread=False)
def quota() -> None:
    raise LimitExceeded("at most 100 concurrent runs per repository", {"limit": 100})


@get("/v1/crash", opt={"permission": Permission.READ}, sync_to_thread=False)
def crash() -> None:
    # What a careless handler might let escape: SQL, a secret, a file path.
    raise RuntimeError('SELECT password FROM "release".users WHERE id = 1 -- /srv/forge/secret.py line 3')


ROUTES = [list_widgets, create_widget, get_widget, widget_status, quota, crash]


class ThreadedServer:
    """uvicorn in its own thread and event loop (so it installs no signal handlers here)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    async def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test app did not start")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)


def widget_app(env: dict[str, str]) -> Any:
    settings = load(CommonSettings, environ=env)
    return build_app(AppSpec(service="widgets", settings=settings, routes=ROUTES))
