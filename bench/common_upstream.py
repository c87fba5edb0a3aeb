"""A do-nothing HTTP service (raw ASGI on uvicorn + httptools): the cheapest possible upstream,
so what a proxy in front of it adds is all that differs.

    python -m bench.common_upstream PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

_BODY = b'{"runs":[],"total":0,"limit":20,"offset":0}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
