"""Placeholder until the gateway proxy lands: answers health checks only."""

import os

import uvicorn
from litestar import Litestar, get


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False)
def readyz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    uvicorn.run(Litestar([healthz, readyz]), host="127.0.0.1", port=int(os.environ.get("FORGE_PORT", "8080")), log_level="warning")


if __name__ == "__main__":
    main()
