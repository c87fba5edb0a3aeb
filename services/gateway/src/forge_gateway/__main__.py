"""``python -m forge_gateway``: validate the settings, then serve the gateway with uvicorn."""

from forge_common.server import serve

from .app import create_app
from .settings import Settings


def main() -> None:
    # The gateway is the edge: the client address is the TCP peer, and X-Forwarded-For from a
    # client is extended, never believed (uvicorn would otherwise trust it from loopback).
    serve("gateway", Settings, create_app, proxy_headers=False)


if __name__ == "__main__":
    main()
